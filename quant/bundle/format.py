"""The quantized-model bundle, format version 3: names, constants, the error type and reading the config.

A bundle is a folder with ``model.safetensors`` + ``quant_config.json`` + ``report.json``.

``quant_config.json`` holds ``format``/``format_version``, the architecture (``model.name`` + ``arch_kwargs`` as given
to :func:`quant.models.build_model`, and the resolved timm ``arch`` + ``timm_kwargs`` that loading rebuilds from, so a
built-in model's bundle does not depend on the shipped float weights), the recipe (``softmax``, ``minmax``, for the
record), the packing layout, ``target``/``block_size`` for runtime targets, the library versions and ``layers``: the
plain **quantization map**, per layer ``{"component", "wbits", "abits", "form" (runtime targets), "weight": null |
{"kind", "bits", "layout", "block_size", "shape", "dtype"}, "inputs": [null | {"kind", "bits", "granularity"...}]}``.

``model.safetensors`` holds, for every layer with quantized weights: ``{layer}.weight.codes`` (uint8 integer codes
bit-packed to their width, :mod:`quant.packing` layout ``lsb8``), ``{layer}.weight.scale`` (float, ``[out, 1, ...]``
or ``[out, n_blocks, 1]``) and ``{layer}.weight.zero_point`` (packed like the codes); for every quantized input
operand ``i``: ``{layer}.inputs.{i}.{field}`` (``scale``/``zero_point``, ``a``/``c``...); and every other tensor of the
wrapped model under its ``state_dict`` name (biases, float weights, reparameterized LayerNorms, embeddings...).
Version 2 bundles (quantizer modules' state) are not read: loading names the version and says to export again.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "CONFIG_FILE",
    "MODEL_FILE",
    "REPORT_FILE",
    "BundleError",
    "read_config",
]

BUNDLE_FORMAT = "mpq-bundle"
BUNDLE_FORMAT_VERSION = 3
MODEL_FILE, CONFIG_FILE, REPORT_FILE = "model.safetensors", "quant_config.json", "report.json"


class BundleError(ValueError):
    """A bundle that cannot be written or loaded (missing file or tensor, wrong version, shape mismatch...)."""


def read_config(directory: Path) -> dict:
    """The checked ``quant_config.json`` of the bundle in ``directory``; ``BundleError`` saying what is wrong."""
    from ..packing import PACKING

    if not directory.is_dir():
        raise BundleError(f"bundle folder {str(directory)!r} does not exist")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"bundle {str(directory)!r} is missing {name}")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{CONFIG_FILE} must hold a JSON object")
    version = config.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        from ..version import __version__

        raise BundleError(f"unsupported bundle format_version {version!r} in {CONFIG_FILE}; this mpq "
                          f"({__version__}) reads version {BUNDLE_FORMAT_VERSION}: export the model again")
    for key in ("model", "recipe", "layers"):
        if not isinstance(config.get(key), dict):
            raise BundleError(f"{CONFIG_FILE} has no {key!r} section")
    if config.get("packing", PACKING) != PACKING:
        raise BundleError(f"unknown packing {config.get('packing')!r} in {CONFIG_FILE}; expected {PACKING!r}")
    return config
