"""Actual against theoretical bytes of a bundle's ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path

import safetensors
import torch

from ..quantizers.weight import params_shape
from .format import CONFIG_FILE, MODEL_FILE, read_config

__all__ = ["bundle_sizes"]


def bundle_sizes(path: str | Path) -> dict[str, int | float]:
    """Actual vs theoretical bytes of a bundle's ``model.safetensors``.

    ``theoretical_bytes``: the information stored, at its exact width: each packed weight at ``numel * bits / 8``
    bytes, each zero point at ``bits / 8`` bytes, every other tensor (scales, float tensors, activation params) at
    its dtype's size. ``actual_bytes``: the file size (safetensors header and the padding of code streams to whole
    groups of 8 codes included). Also ``packed_weight_bytes``, ``header_bytes``, ``config_bytes``
    (``quant_config.json``) and ``overhead`` = actual / theoretical - 1.
    """
    directory = Path(path)
    config = read_config(directory)
    with safetensors.safe_open(str(directory / MODEL_FILE), framework="pt") as handle:
        stored = {key: _nbytes(handle, key) for key in handle.keys()}  # noqa: SIM118
    theoretical = packed = 0.0
    accounted: set[str] = set()
    for name, entry in config["layers"].items():
        weights = entry.get("weight")
        if not weights:
            continue
        numel, bits = int(torch.Size(weights["shape"]).numel()), int(weights["bits"])
        zeros = int(torch.Size(params_shape(tuple(weights["shape"]), weights.get("block_size"))).numel())
        packed += numel * bits / 8
        theoretical += numel * bits / 8 + zeros * bits / 8
        accounted |= {f"{name}.weight.codes", f"{name}.weight.zero_point"}
    theoretical += sum(size for key, size in stored.items() if key not in accounted)
    payload = sum(stored.values())
    actual = (directory / MODEL_FILE).stat().st_size
    return {
        "actual_bytes": actual,
        "theoretical_bytes": theoretical,
        "packed_weight_bytes": packed,
        "header_bytes": actual - payload,
        "config_bytes": (directory / CONFIG_FILE).stat().st_size,
        "overhead": actual / theoretical - 1 if theoretical else 0.0,
    }


def _nbytes(handle, key: str) -> int:
    tensor_slice = handle.get_slice(key)
    numel = int(torch.Size(tensor_slice.get_shape()).numel())
    itemsize = {"U8": 1, "I8": 1, "BOOL": 1, "F16": 2, "BF16": 2, "I16": 2, "F32": 4, "I32": 4, "F64": 8,
                "I64": 8}[tensor_slice.get_dtype()]
    return numel * itemsize
