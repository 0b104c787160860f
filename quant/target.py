"""The registry of deployment targets: which forms each target executes, looked up by generic code (config,
layers, calibration plans, sensitivity, allocation) without importing any runtime.

A *target* names the runtime a job deploys to. ``sim`` is mpq's simulated fake quantization: any ``(wbits, abits)``
pair of ``quant.config.ALLOWED_WBITS`` x ``ALLOWED_ABITS``, no runtime executes it as integer kernels, and it has
no forms. Every other target is one package under ``quant.deploy`` holding its forms, runtime settings, latency
table, deploy check and the export of its layers; this module only knows each target's form table and where its
layer exporter lives (imported on first use, so ``onnx``/``onnxruntime`` load only when something is exported).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .deploy.form import Form, FormError, layer_kind
from .deploy.onnxruntime_cpu import forms as _ort

__all__ = [
    "FORMS",
    "FORM_NAMES",
    "TARGETS",
    "Form",
    "FormError",
    "form_by_name",
    "form_for_bits",
    "form_weight_bytes",
    "forms_for",
    "layer_exporter",
    "layer_kind",
]

#: Deployment targets a job may name (``MethodSpec.target``).
TARGETS = ("sim", _ort.TARGET)

#: Forms per target (``sim`` has none: every allowed bit pair is simulated).
FORMS: dict[str, tuple[Form, ...]] = {"sim": (), _ort.TARGET: _ort.FORMS}

#: Form names a job may list in ``MethodSpec.forms`` (only ``onnxruntime-cpu`` has forms).
FORM_NAMES = _ort.FORM_NAMES

#: Bytes a deployed graph stores for a layer's weight in a form (``onnxruntime-cpu``'s initializer layout).
form_weight_bytes = _ort.form_weight_bytes

#: Module of each runtime target that provides ``export_layer`` (the target mode of ``quant.export.export_onnx``).
_EXPORTERS = {_ort.TARGET: "quant.deploy.onnxruntime_cpu.export"}


def _known(target: str) -> tuple[Form, ...]:
    if target not in FORMS:
        raise FormError(f"unknown target {target!r}; targets are {', '.join(TARGETS)}")
    return FORMS[target]


def forms_for(target: str, component: str, allowed: tuple[str, ...] | list[str] = ()) -> tuple[Form, ...]:
    """The forms ``target`` executes for a layer of ``component``, restricted to the names in ``allowed``
    (empty: all). ``sim`` returns ``()`` (no restriction)."""
    kind = layer_kind(component)
    return tuple(f for f in _known(target) if kind in f.kinds and (not allowed or f.name in allowed))


def form_for_bits(target: str, component: str, wbits: int, abits: int) -> Form:
    """The form of ``(wbits, abits)`` for a layer of ``component`` (weightless layers: ``wbits`` is ignored and
    read as 16). Raises ``FormError`` listing the executable pairs."""
    kind = layer_kind(component)
    if kind == "matmul":
        wbits = 16
    candidates = forms_for(target, component)
    for form in candidates:
        if (form.wbits, form.abits) == (int(wbits), int(abits)):
            return form
    listed = ", ".join(f"{f.name}=(w{f.wbits}, a{f.abits})" for f in candidates)
    raise FormError(f"target {target!r} cannot execute a {component} layer at (wbits={wbits}, abits={abits}); "
                    f"its forms are {listed}")


def form_by_name(target: str, component: str, name: str) -> Form:
    """The form called ``name`` for a layer of ``component``; ``FormError`` when the target has none."""
    for form in forms_for(target, component):
        if form.name == name:
            return form
    names = ", ".join(f.name for f in forms_for(target, component))
    raise FormError(f"target {target!r} has no form {name!r} for a {component} layer; its forms are {names}")


def layer_exporter(target: str) -> Callable:
    """The runtime target's ``export_layer(layer, name, placeholders) -> nn.Module`` (see
    ``quant.export.placeholder``); ``FormError`` for ``sim`` or an unknown target."""
    if target not in _EXPORTERS:
        raise FormError(f"target {target!r} has no layer exporter; runtime targets are {', '.join(_EXPORTERS)}")
    return importlib.import_module(_EXPORTERS[target]).export_layer
