"""The ``reconstruct`` stage: FIMA-Q refines the chosen table entries; the refined params are a stored blob.

The model runs with the chosen entries when the stage starts. The refined params (learned weight codes, learned input
scales) are returned as values and written into the job's table by the pipeline, so nothing done later (measuring a
sweep point, exporting) can undo them. A resumed run restores them from the blob instead of training again.
"""

from __future__ import annotations

from ..calibration import ParamTable, TableError
from ..quantizers import LayerParams
from .load import LoadedJob
from .runner import StageRunner
from .store import load_tensors, save_tensors

__all__ = ["reconstruct_stage"]

_ENTRY = (0, 0)  # the one "pair" under which the blob stores each layer's refined params


def _unblob(tensors, metadata) -> dict[str, LayerParams] | None:
    try:
        table = ParamTable.from_tensors(metadata["table"], tensors)
    except (KeyError, TableError):
        return None
    return {layer: table.entry(layer, _ENTRY) for layer in table.layers()}


def reconstruct_stage(runner: StageRunner, job: LoadedJob, qmodel) -> dict[str, LayerParams]:
    """Run or reuse the stage; returns the refined params ``{layer: LayerParams}`` (empty when skipped)."""
    config = job.config
    found: dict[str, dict[str, LayerParams]] = {}

    def restore(output: dict):
        if output.get("skipped"):
            found["params"] = {}
            return found["params"]
        loaded = load_tensors(runner.store, output.get("params"))
        params = _unblob(*loaded) if loaded is not None else None
        if params is not None:
            found["params"] = params
        return params

    def body() -> dict:
        if config.method.reconstruct == "none":
            found["params"] = {}
            return {"skipped": True, "reason": "reconstruct=none"}
        from ..reconstruct import reconstruct_stage as run_reconstruction  # FIMA-Q block reconstruction

        report, params = run_reconstruction(qmodel, job.float_model, job.calib, config, runner.store.workdir,
                                            lambda f, msg="": runner.report("reconstruct", f, msg))
        found["params"] = params
        index, tensors = ParamTable({layer: {_ENTRY: p} for layer, p in params.items()}).to_tensors()
        return {**report, "params": save_tensors(runner.store, tensors, {"table": index})}

    runner.stage("reconstruct", body, restore)
    return found["params"]
