"""Data-free calibration: synthetic images generated from the float model itself (PSAQ-ViT, ECCV 2022).

Modules, one concept each: ``hooks`` (where the patch tokens of each attention block or Swin stage are read),
``entropy`` (the patch-similarity differential entropy by Gaussian kernel density), ``objective`` (entropy +
cross-entropy to random targets + image prior), ``generator`` (the seeded Adam loop), ``preview`` (a PNG grid of
the images for the report). The pipeline's ``synthesize`` stage (:mod:`quant.pipeline.synthesize`) uses them.
"""

from .entropy import kde_entropy, patch_similarity, similarity_entropy
from .generator import DEFAULT_STEPS, SyntheticImages, SyntheticSettings, synthesize_images
from .hooks import NoAttentionBlocksError, PatchTokenCapture, TokenSite, token_sites
from .objective import LossWeights, synthetic_loss, total_variation

__all__ = [
    "DEFAULT_STEPS",
    "LossWeights",
    "NoAttentionBlocksError",
    "PatchTokenCapture",
    "SyntheticImages",
    "SyntheticSettings",
    "TokenSite",
    "kde_entropy",
    "patch_similarity",
    "similarity_entropy",
    "synthesize_images",
    "synthetic_loss",
    "token_sites",
    "total_variation",
]
