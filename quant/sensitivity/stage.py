"""Pipeline adapter: the ``sensitivity`` stage scores every entry of the job's parameter table."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..calibration import ParamTable
from ..wrap import model_target
from .compute import compute_sensitivity

__all__ = ["sensitivity_stage"]


def sensitivity_stage(qmodel: nn.Module, table: ParamTable, calib, config, progress: Callable[[float], None]) -> dict:
    """The sensitivity table of ``table``'s entries on the calibration images, as a JSON-able dict (with the digest
    of the parameter table it scored, so a reuse can be checked against the table it is used with)."""
    method = config.method
    reference = (8, 8) if model_target(qmodel)[0] != "sim" else (4, 4)
    sens = compute_sensitivity(
        qmodel, table, calib.images, calib.labels, type_aware=method.type_aware, reference_bits=reference,
        batch_size=min(config.data.batch_size, 32), seed=config.seed, progress=progress,
    )
    return {"table": sens.to_dict(), "type_aware": method.type_aware, "images": len(calib),
            "params_digest": table.digest()}
