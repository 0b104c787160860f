"""FIMA-Q block-wise reconstruction (AdaRound + learned activation scales + QDrop, MSE or Fisher losses).

Plain API: ``reconstruct_(qmodel, float_model, images, loss="fisher_dplr", iters=..., rank=5, ...)`` returns a
``ReconstructReport`` whose ``params`` are the refined layer params. Pipeline entry point: ``reconstruct_stage(qmodel,
float_model, calib, config, workdir, progress)`` returns the report as a JSON-able dict and the refined params. See
``engine`` for the method and the documented choices, ``block`` for one block's training.
"""

from .blocks import Block, discover_blocks
from .engine import reconstruct_
from .losses import LOSSES
from .options import BlockReport, ReconstructOptions, ReconstructReport
from .stage import reconstruct_stage

__all__ = [
    "LOSSES",
    "Block",
    "BlockReport",
    "ReconstructOptions",
    "ReconstructReport",
    "discover_blocks",
    "reconstruct_",
    "reconstruct_stage",
]
