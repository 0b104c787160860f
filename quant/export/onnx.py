"""ONNX export of a wrapped model with the params its layers run with: ``export_onnx(qmodel, path, input_shape)``.

Writes a single-file ONNX model (opset 21, input ``images`` [batch, C, H, W] with a dynamic batch, output
``logits``) that onnxruntime runs on the CPU. PyTorch's ``torch.export``-based exporter (``dynamo=True``, needs
``onnxscript``) writes the float parts of the model; every quantized part is a placeholder (``placeholder``) that
the surgery after the export replaces with the nodes its emitter writes:

- ``sim`` layers (``sim``): static per-tensor input grids as ``[Clip ->] QuantizeLinear -> DequantizeLinear``,
  weight codes as per-channel ``DequantizeLinear`` (``uint4`` for weights of <= 4 bits), the rest simulated in
  float (grouped scales, log2, TanQ, dynamic grids); ``qdq`` writes every Q/DQ node;
- deployment-target layers (``layer.target`` other than ``sim``): one placeholder per layer, replaced by the
  target's emitter for the layer's form (``quant.target.layer_exporter``; for ``onnxruntime-cpu``:
  ``quant.deploy.onnxruntime_cpu.emit``, the emitter its latency graphs are built with).

onnxruntime then reproduces the PyTorch logits to float rounding (~1e-6), except for the rare input where a value
lands within an ulp of a rounding tie and the two runtimes' last-bit differences (summation order) pick
neighbouring codes; on the vit-digits test split that is a handful of images at W4A4 and top-1 is unchanged
(``bench/artifact.py``). The model's ``metadata_props`` count each kind (``mpq.qdq_weights``,
``mpq.qdq_activations``, ``mpq.float_simulated_activations``, ``mpq.int8_weights`` when there are symmetric
weights, ``mpq.int4_weights``, ``mpq.uint8_weights``) and, for a deployment target, carry ``mpq.target``,
``mpq.block_size`` and ``mpq.forms`` (JSON ``{form: count}``). The quantized model itself is not modified.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..target import layer_exporter
from ..wrap import quant_layers
from .graph import ONNX_OPSET, OnnxExportError
from .placeholder import Placeholders
from .sim import sim_layer

__all__ = ["export_onnx"]

#: ``metadata_props`` counts, in the order they are written.
_COUNTS = ("qdq_weights", "qdq_activations", "float_simulated_activations", "int8_weights", "int4_weights",
           "uint8_weights")


def _exportable(qmodel: nn.Module) -> tuple[nn.Module, Placeholders, Counter, dict]:
    """A CPU float copy of ``qmodel`` whose quantization layers are replaced by their export modules; the
    placeholders, the float-simulated count, and (deployment target) ``{"target", "block_size", "forms"}``."""
    model = copy.deepcopy(qmodel).cpu().float().eval()
    placeholders = Placeholders()
    counts: Counter = Counter()
    target: dict = {}
    for name, layer in quant_layers(model).items():
        if layer.target == "sim":
            replacement = sim_layer(layer, name, placeholders, counts)
        else:
            replacement = layer_exporter(layer.target)(layer, name, placeholders)
            target.setdefault("target", layer.target)
            target.setdefault("block_size", layer.block_size)
            forms = target.setdefault("forms", {})
            forms[layer.form.name] = forms.get(layer.form.name, 0) + 1
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model, placeholders, counts, target


def export_onnx(qmodel: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export ``qmodel`` (wrapped; its layers' current params) to ``path`` as an ONNX model; returns the path.

    input_shape: ``(C, H, W)`` of one image; the batch dimension is dynamic. A model wrapped for a deployment
    target is exported with each layer in its form (module doc). Raises ``OnnxExportError`` (a ``RuntimeError``)
    when the exported model fails ``onnx.checker`` or a layer's params do not match its form, and ``ImportError``
    naming the packages when ``onnx`` or ``onnxscript`` (which PyTorch's exporter needs) is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - imported by torch.onnx.export(dynamo=True); fail early and clearly
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({exc}); "
                          "pip install onnx onnxscript onnxruntime") from exc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, placeholders, counts, target = _exportable(qmodel)
    example = torch.zeros((2, *input_shape), device="cpu")  # the exportable copy lives on the CPU
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=["images"],
            output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    proto = program.model_proto
    counts.update(placeholders.replace(proto))
    for node in proto.graph.node:  # the exporter's per-node stack traces and module paths: 60% of the file
        del node.metadata_props[:]
        node.doc_string = ""
    meta = {f"mpq.{key}": str(counts[key]) for key in _COUNTS if key != "int8_weights" or counts[key]}
    if target:
        meta.update({"mpq.target": str(target["target"]), "mpq.block_size": str(target["block_size"]),
                     "mpq.forms": json.dumps(target["forms"], sort_keys=True)})
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"exported ONNX model fails onnx.checker: {exc}") from exc
    onnx.save_model(proto, str(path))
    return path
