"""The sensitivity table of a job's parameter table: Fisher Omegas of every entry, then the type factors.

Type factors (LampQ's type-aware scaling; its exact alpha_t is not public): raw Omegas of different component types
(qkv, proj, fc1, fc2, the two matmuls, patch_embed, head) live on different scales. For each type, the model is
assembled with all layers of that type at their reference entry (the pair nearest to ``reference_bits``, the
``int8`` form on a runtime target) and every other layer float; the measured KL to float on ``alpha_images``
calibration images divided by the predicted sum of their Omegas is the type's factor (clamped to [0.05, 20]; 1 where
the prediction is ~0). ``type_aware=False`` keeps all factors at 1.

Our extension (documented choice): the same measurement at every width the table holds, weights and inputs apart
(``w{bits}``: the type's weights at that width, inputs float; ``a{bits}``: the reverse; on a runtime target one per
form), gives a factor per type and width. Fisher's second-order estimate is good at 6-8 bits and too low at 2-3 bits,
where quantization errors are no longer small; a factor per width makes the predicted loss of quantizing a whole type
at any width equal the measured one, so the allocation compares 2-bit and 4-bit choices on measured terms. The table
also records the whole model at its reference entries, measured against predicted (``model_check``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import Pair, ParamTable
from ..evaluate import predict_logits
from ..quantizers import FLOAT_BITS, LayerParams
from ..target import FormError, form_for_bits, forms_for
from ..wrap import load_params_, model_target, quant_layers
from .fisher import fisher_pass
from .table import SensitivityTable

__all__ = ["compute_sensitivity", "measure_kl"]

_ALPHA_RANGE = (0.05, 20.0)


@torch.no_grad()
def measure_kl(qmodel: nn.Module, images: torch.Tensor, float_logits: torch.Tensor, batch_size: int = 64) -> float:
    """Mean KL(float || quantized) in nats per image of ``qmodel`` as it is now on ``images``."""
    logits = predict_logits(qmodel, images, batch_size)
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(float_logits, 1), log_target=True,
                    reduction="batchmean").item()


def _keys(table: ParamTable, name: str, component: str, target: str) -> tuple[dict, dict]:
    """``(weights {key: WeightParams}, acts {key: (operand params...)})`` of a layer's table entries; keys are bits
    on ``sim`` and form names on runtime targets (float sides left out on sim, kept as None on targets)."""
    weights: dict = {}
    acts: dict = {}
    for pair in table.pairs(name):
        entry = table.entry(name, pair)
        if target == "sim":
            if entry.weight is not None:
                weights.setdefault(pair[0], entry.weight)
            if pair[1] < FLOAT_BITS:
                acts.setdefault(pair[1], entry.inputs)
        else:
            form = form_for_bits(target, component, *pair).name
            if entry.weight is not None:
                weights.setdefault(form, entry.weight)
            if any(p is not None for p in entry.inputs):
                acts.setdefault(form, entry.inputs)
    return weights, acts


def _nearest(bits: int, available: Sequence[int]) -> int:
    return min(available, key=lambda b: (abs(b - bits), b))


def _reference_pair(table: ParamTable, sens: SensitivityTable, name: str, ref: Pair) -> Pair:
    """The entry a layer takes when its type factor is calibrated: the pair nearest to ``ref`` among the table's
    (target: the form of ``ref`` when the table has it, else its first quantized form, else fp32)."""
    pairs = table.pairs(name)
    if sens.target == "sim":
        weights = [w for w, _ in pairs if w < FLOAT_BITS]
        w = _nearest(ref[0], weights) if weights else FLOAT_BITS
        acts = [a for ww, a in pairs if ww == w and a < FLOAT_BITS] or [a for _, a in pairs]
        return w, _nearest(ref[1], acts)
    component = sens.components[name]
    try:
        form = form_for_bits(sens.target, component, *ref)
        if (form.wbits, form.abits) in pairs:
            return form.wbits, form.abits
    except FormError:
        pass
    quantized = [(f.wbits, f.abits) for f in forms_for(sens.target, component) if f.name != "fp32"
                 and (f.wbits, f.abits) in pairs]
    return quantized[0] if quantized else (FLOAT_BITS, FLOAT_BITS)


def _factor(measured: float, predicted: float) -> float:
    if predicted <= 1e-12 or measured <= 0:
        return 1.0
    return float(min(max(measured / predicted, _ALPHA_RANGE[0]), _ALPHA_RANGE[1]))


def _width_probes(table: ParamTable, sens: SensitivityTable, members: list[str], layers) -> dict[str, tuple]:
    """``{key: (params by layer, raw predicted Omega)}``: every width of one component type, applied to all its
    layers that have it. Sim: ``w{b}`` (weights at b bits, inputs float) and ``a{b}`` (inputs at b, weights float);
    runtime targets: one probe per form (weights and inputs together)."""
    probes: dict[str, tuple[dict, float]] = {}
    for name in members:
        n_inputs = layers[name].n_inputs
        for pair in table.pairs(name):
            entry = table.entry(name, pair)
            if sens.target != "sim":
                form = sens.form_of(name, *pair)
                if form.name == "fp32":
                    continue
                parts = [(form.name, entry, sens.form_weight[name].get(form.name, 0.0)
                          + sens.form_act[name].get(form.name, 0.0))]
            else:
                parts = []
                if entry.weight is not None:
                    parts.append((f"w{pair[0]}", LayerParams(entry.weight, (None,) * n_inputs),
                                  sens.weight[name].get(pair[0], 0.0)))
                if pair[1] < FLOAT_BITS:
                    parts.append((f"a{pair[1]}", LayerParams(None, entry.inputs), sens.act[name].get(pair[1], 0.0)))
            for key, params, omega in parts:
                chosen, predicted = probes.setdefault(key, ({}, 0.0))
                if name not in chosen:
                    chosen[name] = params
                    probes[key] = (chosen, predicted + omega)
    return probes


def _calibrate_type_factors(qmodel, table: ParamTable, sens: SensitivityTable, images, reference: Pair,
                            batch_size: int) -> None:
    """Type factors at the reference pair and at every width (module doc), and the whole-model check."""
    layers = quant_layers(qmodel)
    saved = {name: layer.params for name, layer in layers.items()}
    try:
        load_params_(qmodel, {})
        float_logits = predict_logits(qmodel, images, batch_size)
        chosen_all: dict[str, Pair] = {}
        for component in sorted(set(sens.components.values())):
            members = [n for n, c in sens.components.items() if c == component]
            chosen = {name: _reference_pair(table, sens, name, reference) for name in members}
            chosen_all.update(chosen)
            predicted = sum(sens.omega(name, *pair, type_aware=False) for name, pair in chosen.items())
            load_params_(qmodel, {n: table.entry(n, p) if p in table.pairs(n) else
                                  LayerParams.float(layers[n].n_inputs) for n, p in chosen.items()})
            measured = measure_kl(qmodel, images, float_logits, batch_size)
            sens.measured_type_kl[component] = measured
            sens.type_factors[component] = _factor(measured, predicted)
            widths = {}
            for key, (params, raw) in _width_probes(table, sens, members, layers).items():
                load_params_(qmodel, params)
                widths[key] = _factor(measure_kl(qmodel, images, float_logits, batch_size), raw)
            sens.width_factors[component] = widths
        present = {n: p for n, p in chosen_all.items() if p in table.pairs(n)}
        load_params_(qmodel, table.select(present))
        predicted = sum(sens.omega(n, *p) for n, p in present.items())  # before the model factor exists
        sens.model_check = {"measured_kl": measure_kl(qmodel, images, float_logits, batch_size),
                            "predicted_kl": predicted}
    finally:
        load_params_(qmodel, saved)


def compute_sensitivity(
    qmodel: nn.Module,
    table: ParamTable,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    type_aware: bool = True,
    reference_bits: Pair = (4, 4),
    alpha_images: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> SensitivityTable:
    """The sensitivity table of every entry of ``table`` (the parameter table of the wrapped ``qmodel``).

    images: [N,3,H,W] calibration images; labels: optional int64 [N] (cross-entropy instead of KL). Every layer's
    params are restored afterwards. On a runtime target ``reference_bits`` is read as the reference form's key.
    """
    layers = quant_layers(qmodel)
    target, block_size = model_target(qmodel)
    components = {n: layer.component for n, layer in layers.items()}
    keys = {name: _keys(table, name, components[name], target) for name in layers}
    acts = {name: k[1] for name, k in keys.items()}
    hooks = fisher_pass(qmodel, layers, acts, images, labels, batch_size=batch_size, seed=seed,
                        progress=(lambda f: progress(0.8 * f)) if progress else None)
    n_images = len(images)
    act = hooks.act_omegas(n_images)
    weight = hooks.weight_omegas({name: k[0] for name, k in keys.items()}, n_images)
    loss = "cross_entropy" if labels is not None else "kl"
    if target == "sim":
        sens = SensitivityTable(components=components, weight=weight, act=act, loss=loss,
                                reference_bits=tuple(reference_bits))
    else:
        form_weight = {n: {f.name: float(weight[n].get(f.name, 0.0)) for f in _forms(target, components[n], table, n)}
                       for n in layers}
        form_act = {n: {f.name: float(act[n].get(f.name, 0.0)) for f in _forms(target, components[n], table, n)}
                    for n in layers}
        sens = SensitivityTable(components=components, weight={n: {} for n in layers}, act={n: {} for n in layers},
                                loss=loss, reference_bits=tuple(reference_bits), target=target,
                                block_size=block_size, form_weight=form_weight, form_act=form_act)
    if type_aware:
        _calibrate_type_factors(qmodel, table, sens, images[:alpha_images], tuple(reference_bits), batch_size)
    if progress:
        progress(1.0)
    return sens


def _forms(target: str, component: str, table: ParamTable, name: str):
    pairs = set(table.pairs(name))
    return [f for f in forms_for(target, component) if (f.wbits, f.abits) in pairs]
