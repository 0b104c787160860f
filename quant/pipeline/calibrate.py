"""The ``calibrate`` stage: the wrapped, reparameterized model and the job's parameter table, stored as a blob.

The table holds every candidate the job may choose (``quant.choices.table_pairs``), each fitted and searched at its
own width (``quant.calibration``). The stage output names a blob with the table and the reparameterization folds, so
a resumed run, a reallocation and a Pareto re-solve reuse them bit for bit. When a reused table lacks candidates the
job needs (a reallocation that pins a layer at a new pair), only the layers missing entries are calibrated again and
the stage output is updated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..calibration import ParamTable, TableError, calibrate_table
from ..choices import reference_pairs, table_pairs
from ..ptq import PTQ_METHODS, calibration_plan, wrapped_copy
from ..reparam import Fold, ReparamReport, apply_fold_, plan_folds
from ..validation import check_bits
from ..wrap import quant_layers
from .load import LoadedJob
from .runner import StageRunner
from .store import load_tensors, save_tensors

__all__ = ["Prepared", "calibrate_stage"]

_BLOB_VERSION = 1


@dataclass
class Prepared:
    """The model the table was calibrated on (wrapped copy of the float model, folds applied), the table and the
    reparameterization reports."""

    qmodel: nn.Module
    table: ParamTable
    reparam: list[ReparamReport]


def _blob(table: ParamTable, folds: list[Fold]) -> tuple[dict[str, torch.Tensor], dict]:
    index, tensors = table.to_tensors(prefix="table/")
    for i, fold in enumerate(folds):
        tensors.update({f"fold/{i}.low": fold.low, f"fold/{i}.ratio": fold.ratio, f"fold/{i}.shift": fold.shift})
    return tensors, {"version": _BLOB_VERSION, "table": index, "folds": [asdict(f.report) for f in folds]}


def _unblob(tensors: dict[str, torch.Tensor], metadata: dict) -> tuple[ParamTable, list[Fold]] | None:
    if metadata.get("version") != _BLOB_VERSION:
        return None
    try:
        table = ParamTable.from_tensors(metadata["table"], tensors, prefix="table/")
        folds = [Fold(ReparamReport(**report), tensors[f"fold/{i}.low"], tensors[f"fold/{i}.ratio"],
                      tensors[f"fold/{i}.shift"]) for i, report in enumerate(metadata["folds"])]
    except (KeyError, TypeError, TableError):
        return None
    return table, folds


def _missing(table: ParamTable, pairs: dict[str, tuple]) -> dict[str, tuple]:
    """``{layer: pairs}`` of the layers whose needed pairs the table does not all hold."""
    return {name: needed for name, needed in pairs.items() if not set(needed) <= set(table.pairs(name))}


def calibrate_stage(runner: StageRunner, job: LoadedJob) -> Prepared:
    """Run or reuse the ``calibrate`` stage (module doc)."""
    config = job.config
    method = config.method
    qmodel = wrapped_copy(job.float_model, target=method.target, block_size=method.block_size)
    layers = quant_layers(qmodel)
    check_bits(config, list(layers))
    kinds = {name: (layer.component, layer.has_weight) for name, layer in layers.items()}
    pairs, reference = table_pairs(kinds, method), reference_pairs(kinds, method)
    found: dict = {}

    def progress(step: str, fraction: float) -> None:
        weights = {"reparameterize": (0.0, 0.1), "capture": (0.1, 0.3), "fit": (0.4, 0.6)}
        start, span = weights.get(step, (0.0, 1.0))
        runner.report("calibrate", start + span * fraction, step)

    def calibrate(plan_pairs: dict) -> ParamTable:
        plan = calibration_plan(qmodel, method=method.quantizer, pairs=plan_pairs,
                                reference={n: reference[n] for n in plan_pairs}, range_search=method.range_search)
        return calibrate_table(qmodel, job.calib.images, plan, batch_size=config.data.batch_size, seed=config.seed,
                               progress=progress)

    def restore(output: dict):
        loaded = load_tensors(runner.store, output.get("params"))
        values = _unblob(*loaded) if loaded is not None else None
        if values is not None:
            found["values"] = values
        return values

    def body() -> dict:
        torch.manual_seed(config.seed)
        recipe = PTQ_METHODS[method.quantizer]
        folds = []
        if recipe.reparam is not None:
            device = job.device
            batches = (job.calib.images[i:i + config.data.batch_size].to(device)
                       for i in range(0, len(job.calib), config.data.batch_size))
            folds = plan_folds(qmodel, batches, mode=recipe.reparam, reference=reference, seed=config.seed)
            for fold in folds:
                apply_fold_(qmodel, fold)
        progress("reparameterize", 1.0)
        table = calibrate(pairs)
        found["values"] = (table, folds)
        found["applied"] = True
        return _output(runner, table, folds, method)

    output = runner.stage("calibrate", body, restore)
    table, folds = found["values"]
    if not found.get("applied"):
        for fold in folds:
            apply_fold_(qmodel, fold)
    missing = _missing(table, pairs)
    if missing:  # a reused table without some of this job's candidates: fit those layers only
        table = table.with_entries(calibrate(missing))
        output = {**_output(runner, table, folds, method), "seconds": output.get("seconds"),
                  "extended_layers": sorted(missing)}
        runner.store.save("calibrate", output)
        runner.outputs["calibrate"] = output
    return Prepared(qmodel, table, [f.report for f in folds])


def _output(runner: StageRunner, table: ParamTable, folds: list[Fold], method) -> dict:
    tensors, metadata = _blob(table, folds)
    return {"params": save_tensors(runner.store, tensors, metadata), "digest": table.digest(),
            "entries": sum(len(table.pairs(n)) for n in table.layers()), "layers": len(table.layers()),
            "range_search": method.range_search, "reparam": metadata["folds"]}
