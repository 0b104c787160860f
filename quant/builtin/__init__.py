"""Built-in demo models and data, shipped as package data under ``assets/``.

- ``assets/digits.safetensors``: scikit-learn's handwritten digits (raw 8x8 pixels, labels, fixed split
  indices); read by :mod:`quant.data`.
- ``assets/vit-digits.safetensors``, ``assets/swin-digits.safetensors``: float32 ``state_dict`` of the
  built-in models; ``assets/models.json``: their architecture, normalisation, float test top-1 and weights
  sha256; read by :mod:`quant.models`.

All of it is produced by ``python scripts/train_builtin.py`` (``scripts/train_builtin.py`` in the repository).
"""

from pathlib import Path

__all__ = ["ASSETS_DIR"]

#: Folder holding the shipped assets.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
