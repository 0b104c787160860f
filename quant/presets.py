"""Presets: method and data settings sized for the hardware a job runs on.

``quick`` is the CPU demo/test setting (the defaults of ``MethodSpec``/``DataSpec``: no reconstruction, 256
calibration images, no LampQ iterative rounds). ``paper`` runs the methods at their published settings: FIMA-Q
DPLR reconstruction with 20,000 iterations per block and k = 5, up to 1,024 optimisation/calibration images when
the data has them, and LampQ's iterative update (3 rounds). ``auto`` (the default of ``PipelineConfig.preset``)
is ``paper`` on a CUDA device and ``quick`` elsewhere.

A preset only fills settings the job did not give: any field set explicitly in the job spec (pydantic's
``model_fields_set``) keeps its value. ``resolve_preset(config, device)`` returns the config with the preset
applied and ``preset`` set to the resolved name.
"""

from __future__ import annotations

import torch

from .config import PipelineConfig

__all__ = ["PRESETS", "PRESET_NAMES", "resolve_preset"]

#: preset name -> {"method": {...}, "data": {...}} (fields of MethodSpec / DataSpec)
PRESETS: dict[str, dict[str, dict]] = {
    "quick": {
        "method": {"reconstruct": "none", "reconstruct_iters": 500, "reconstruct_rank": 5, "iterative_rounds": 0},
        "data": {"num_calibration": 256},
    },
    "paper": {
        "method": {"reconstruct": "fisher_dplr", "reconstruct_iters": 20000, "reconstruct_rank": 5,
                   "iterative_rounds": 3},
        "data": {"num_calibration": 1024},
    },
}
PRESET_NAMES = ("auto", *PRESETS)


def resolve_preset(config: PipelineConfig, device: torch.device | str) -> PipelineConfig:
    """``config`` with its preset applied to the settings it does not give explicitly (see the module doc).

    device: the device the job runs on (``auto`` means ``paper`` on CUDA, ``quick`` otherwise).
    """
    name = config.preset
    if name == "auto":
        name = "paper" if torch.device(device).type == "cuda" else "quick"
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}; got {config.preset!r}")
    values = PRESETS[name]
    method_update = {k: v for k, v in values["method"].items() if k not in config.method.model_fields_set}
    data_update = {k: v for k, v in values["data"].items() if k not in config.data.model_fields_set}
    return config.model_copy(update={
        "preset": name,
        "method": config.method.model_copy(update=method_update),
        "data": config.data.model_copy(update=data_update),
    })
