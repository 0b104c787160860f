"""Check a latency table against whole exported models: predicted vs measured milliseconds.

``check_prediction(qmodel, table, (C, H, W), {"int8": {layer: form, ...}, ...})`` exports the model once per
assignment (``quant.export.export_onnx`` with each named layer running its table entry of that form, the others
their current params), then times the layer graphs, the float32 model and every exported model in the same
interleaved rounds (so a busy machine slows all of them alike) and returns, per assignment, ``predicted``
(``LatencyTable.predict``), ``measured`` (ms) and ``error`` (predicted / measured - 1). The model's params are
restored afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from ....calibration import ParamTable
from ....target import form_by_name
from ....wrap import load_params_, quant_layers
from .fp32 import export_fp32
from .layers import capture_layers, unique_shapes
from .profile import measure_layers, table_from
from .table import LatencyTable, check_forms, table_key

__all__ = ["check_prediction"]


def _params_of(qmodel: nn.Module, params: ParamTable, forms: Mapping[str, str]) -> dict:
    """``{layer: LayerParams}``: the current params, with the table entry of its form for each layer of ``forms``."""
    layers = quant_layers(qmodel)
    pairs = {}
    for name, form_name in forms.items():
        form = form_by_name(layers[name].target, layers[name].component, form_name)
        pairs[name] = (form.wbits, form.abits)
    return {**{name: layer.params for name, layer in layers.items()}, **params.select(pairs)}


def check_prediction(qmodel: nn.Module, params: ParamTable, input_shape: tuple[int, int, int],
                     assignments: Mapping[str, Mapping[str, str]], *, block_size: int = 32, rounds: int = 30,
                     warmup: int = 5, progress: Callable[[float], None] | None = None
                     ) -> tuple[LatencyTable, dict[str, dict[str, float]]]:
    """The latency table (measured with the checks) and ``{assignment: {predicted, measured, error}}``.

    qmodel: wrapped for ``onnxruntime-cpu``; params: its parameter table (holding every form an assignment names);
    assignments: ``{name: {layer: form}}`` (layers not named keep their current params and form).
    """
    from ....export import export_onnx

    layers = quant_layers(qmodel)
    before = {name: layer.params for name, layer in layers.items()}
    current = {name: layer.form.name for name, layer in layers.items()}
    shapes = capture_layers(qmodel, tuple(input_shape))
    forms = check_forms(())
    with tempfile.TemporaryDirectory(prefix="mpq-latency-check-") as tmp:
        models = {"fp32": export_fp32(qmodel, Path(tmp) / "fp32.onnx", tuple(input_shape))}
        try:
            for name, assignment in assignments.items():
                load_params_(qmodel, _params_of(qmodel, params, assignment))
                models[f"check:{name}"] = export_onnx(qmodel, Path(tmp) / f"check{len(models)}.onnx",
                                                      tuple(input_shape))
        finally:
            load_params_(qmodel, before)
        timings = measure_layers(unique_shapes(shapes), forms, block_size=block_size, input_shape=tuple(input_shape),
                                 models=models, rounds=rounds, warmup=warmup, progress=progress)
    key = table_key(qmodel, tuple(input_shape), shapes, block_size, forms)
    table = table_from(timings, shapes, key, {"rounds": rounds, "warmup": warmup, "checked": list(assignments)})
    results = {}
    for name, assignment in assignments.items():
        predicted = table.predict({**current, **assignment})
        measured = timings.models[f"check:{name}"]
        results[name] = {"predicted": predicted, "measured": measured, "error": predicted / measured - 1.0}
    return table, results
