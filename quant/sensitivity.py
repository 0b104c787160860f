"""LampQ sensitivity: diagonal Fisher of weights and activations, Omega per layer and bit-width, type factors.

The predicted loss increase of quantizing layer ``l``'s weights to ``b`` bits is
``Omega_w(l, b) = 1/2 * sum_i F_i (Q_b(w_i) - w_i)^2`` and of its input activations
``Omega_a(l, b) = 1/2 * E_x[sum_j (dL/dx_j)^2 (Q_b(x_j) - x_j)^2]`` (nats per image). A candidate
``(w, a)`` costs ``Omega_w(l, w) + Omega_a(l, a)``, scaled by the type factor of the layer's component.

Which loss: with labels, the per-image cross-entropy (empirical Fisher). Without labels, the KL divergence to
the float model, whose second-order expansion around the float weights is ``1/2 dtheta^T F dtheta`` with
``F`` the Fisher of the float model's own predictive distribution; we estimate that ``F`` by sampling one
label per image from the float model's softmax and back-propagating its negative log-likelihood (Monte Carlo
"true" Fisher). Gradients are taken on the float model (quantizers off).

Cost: one forward and one backward pass per calibration batch. Parameter gradients are not materialised;
hooks compute per-image weight gradients (one einsum per layer, the same MACs as a normal weight gradient),
square them and accumulate, and multiply activation gradients with every candidate's activation error on the
fly (on a fixed-size random subset of positions per tensor, an unbiased estimate of the sum). The type factors ``alpha_t`` are then calibrated on a small subset: for each component type, the measured
KL of quantizing all layers of that type at the reference bits divided by the predicted sum of their Omega
(clamped to [0.05, 20]; 1 where the prediction is ~0). Type factors off (``type_aware=False``) means all 1.

Deployment targets (a model wrapped with ``target="onnxruntime-cpu"``): the candidates of a layer are the
target's forms (``quant.target.forms_for``), not bit pairs, and Omega is computed per form with the form's own
quantizers: the weight part with block-wise asymmetric weights (``w8``/``w4``/``w4a8``) or symmetric per-channel
weights (``int8``), the activation part with the static uint8 quantizer (``int8``), the dynamic int8 block
quantizer (``w4a8``, on the whole tensor, then the same position subset) or nothing (float inputs). The table
stores them by form name (``form_weight``/``form_act``) and ``omega(layer, wbits, abits)`` looks the form up
from its ``(wbits, abits)`` key. Type factors are calibrated at the ``int8`` form (``reference_bits`` (8, 8)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import predict_logits
from .modules import QuantConv2d, QuantLayer
from .quantizers import FLOAT_BITS, UniformQuantizer
from .target import Form, FormError, form_for_bits, forms_for
from .wrap import model_target, quant_layers, set_quant_enabled_

__all__ = ["SensitivityTable", "compute_sensitivity", "measure_kl", "sensitivity_stage"]

_ALPHA_RANGE = (0.05, 20.0)
#: Activation positions per tensor and batch on which candidate errors are evaluated (unbiased subsample).
_ACT_POSITIONS = 16384


@dataclass
class SensitivityTable:
    """Omega per layer and bit-width (nats per image), component types and per-type factors.

    ``weight[layer][bits]`` and ``act[layer][bits]`` are raw (unscaled) Omegas; ``omega(layer, w, a)`` applies
    the type factor. Layers without weights (matmuls) have an empty ``weight`` entry.

    Target tables (``target != "sim"``): ``form_weight[layer][form]`` and ``form_act[layer][form]`` hold the raw
    Omegas of each computed form (0 for the float side of a form; ``weight``/``act`` stay empty: a bit width
    alone does not name a form), ``block_size`` the weight block size they were computed with.
    """

    components: dict[str, str]
    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]]
    type_factors: dict[str, float] = field(default_factory=dict)
    layer_factors: dict[str, float] = field(default_factory=dict)
    loss: str = "kl"
    reference_bits: tuple[int, int] = (4, 4)
    measured_type_kl: dict[str, float] = field(default_factory=dict)
    target: str = "sim"
    block_size: int | None = None
    form_weight: dict[str, dict[str, float]] = field(default_factory=dict)
    form_act: dict[str, dict[str, float]] = field(default_factory=dict)

    def form_of(self, layer: str, wbits: int, abits: int) -> Form | None:
        """The target form of ``(wbits, abits)`` for ``layer`` (None for sim tables; ``FormError`` if the target
        cannot execute it)."""
        if self.target == "sim":
            return None
        return form_for_bits(self.target, self.components[layer], wbits, abits)

    def omega(self, layer: str, wbits: int, abits: int, type_aware: bool = True) -> float:
        """Predicted loss increase of layer ``layer`` at ``(wbits, abits)`` (16 = float contributes 0; target
        tables: the Omega of the form with that key, 0 for a form that was not computed)."""
        form = self.form_of(layer, wbits, abits)
        if form is not None:
            raw = self.form_weight.get(layer, {}).get(form.name, 0.0) + self.form_act.get(layer, {}).get(form.name, 0.0)
        else:
            raw = (self.weight[layer].get(wbits, 0.0) if wbits < FLOAT_BITS and self.weight[layer] else 0.0)
            raw += self.act[layer].get(abits, 0.0) if abits < FLOAT_BITS else 0.0
        factor = self.type_factors.get(self.components[layer], 1.0) if type_aware else 1.0
        return raw * factor * self.layer_factors.get(layer, 1.0)

    def to_dict(self) -> dict:
        """JSON-able form (bit keys become strings; target tables add ``target``, ``block_size``,
        ``form_weight`` and ``form_act``)."""
        out = {
            "components": self.components,
            "weight": {k: {str(b): v for b, v in d.items()} for k, d in self.weight.items()},
            "act": {k: {str(b): v for b, v in d.items()} for k, d in self.act.items()},
            "type_factors": self.type_factors,
            "layer_factors": self.layer_factors,
            "loss": self.loss,
            "reference_bits": list(self.reference_bits),
            "measured_type_kl": self.measured_type_kl,
        }
        if self.target != "sim":
            out.update(target=self.target, block_size=self.block_size, form_weight=self.form_weight,
                       form_act=self.form_act)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SensitivityTable:
        return cls(
            components=dict(data["components"]),
            weight={k: {int(b): float(v) for b, v in d.items()} for k, d in data["weight"].items()},
            act={k: {int(b): float(v) for b, v in d.items()} for k, d in data["act"].items()},
            type_factors={k: float(v) for k, v in data.get("type_factors", {}).items()},
            layer_factors={k: float(v) for k, v in data.get("layer_factors", {}).items()},
            loss=data.get("loss", "kl"),
            reference_bits=tuple(data.get("reference_bits", (4, 4))),
            measured_type_kl={k: float(v) for k, v in data.get("measured_type_kl", {}).items()},
            target=str(data.get("target", "sim")),
            block_size=None if data.get("block_size") is None else int(data["block_size"]),
            form_weight={k: {f: float(v) for f, v in d.items()} for k, d in data.get("form_weight", {}).items()},
            form_act={k: {f: float(v) for f, v in d.items()} for k, d in data.get("form_act", {}).items()},
        )


class _FisherHooks:
    """Forward/backward hooks accumulating squared per-image weight gradients and activation Omegas."""

    def __init__(self, layers: dict[str, QuantLayer], abits: Sequence[int], seed: int = 0,
                 forms: dict[str, tuple[Form, ...]] | None = None, block_size: int = 32) -> None:
        """abits: candidate activation bits (sim); forms: candidate forms per layer (target mode, replaces
        abits: the activation Omegas are then keyed by form name, forms with float inputs skipped)."""
        self.layers = layers
        self.abits = [b for b in abits if b < FLOAT_BITS]
        self.block_size = block_size
        # activation candidates per layer: ints (bits, sim) or forms (target mode)
        self.candidates: dict[str, list] = {
            name: ([f for f in forms.get(name, ()) if f.activations != "float"] if forms is not None
                   else list(self.abits))
            for name in layers}
        self.fisher: dict[str, torch.Tensor] = {}
        # activation Omegas per layer: one device tensor [len(abits)] each, read back once at the end
        self.act_sums: dict[str, torch.Tensor] = {}
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}
        self.handles = [layer.register_forward_hook(self._forward_hook(name, layer)) for name, layer in layers.items()]

    def _forward_hook(self, name: str, layer: QuantLayer):
        quantizers = layer.activation_quantizers()

        def hook(_module, inputs, output):
            for index, x in enumerate(inputs):
                if x.requires_grad and self.candidates[name]:
                    x.register_hook(self._act_grad_hook(name, quantizers[index], x.detach()))
            if layer.has_weight and output.requires_grad:
                output.register_hook(self._weight_grad_hook(name, layer, inputs[0].detach()))

        return hook

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator of ``device`` (position subsets are drawn where the tensors live)."""
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    @property
    def act(self) -> dict[str, dict]:
        """``{layer: {abits: summed Omega_a}}`` (target mode: ``{layer: {form name: ...}}``) as floats (one
        device-to-host copy per layer)."""
        out = {}
        for name in self.layers:
            keys = [c.name if isinstance(c, Form) else c for c in self.candidates[name]]
            sums = self.act_sums.get(name)
            values = sums.tolist() if sums is not None else [0.0] * len(keys)
            out[name] = dict(zip(keys, values, strict=True))
        return out

    def _quantized(self, quantizer, candidate, x: torch.Tensor, values: torch.Tensor,
                   pick: torch.Tensor | None) -> torch.Tensor:
        """``values`` (the positions ``pick`` of ``x``) fake-quantized as ``candidate`` quantizes them."""
        if not isinstance(candidate, Form):
            return quantizer.quantize_at(values, candidate)
        if not isinstance(quantizer, UniformQuantizer):
            return quantizer.quantize_at(values, candidate.abits)
        if candidate.activations == "static":
            return quantizer.quantize_at(values, candidate.abits, dynamic_block=None)
        # dynamic blocks depend on whole rows: quantize the tensor, then take the positions
        full = quantizer.quantize_at(x, candidate.abits, dynamic_block=self.block_size).reshape(-1)
        return full if pick is None else full[pick]

    def _act_grad_hook(self, name, quantizer, x):
        def hook(grad):
            values, g = x.reshape(-1), grad.detach().reshape(-1)
            scale, pick = 1.0, None
            if values.numel() > _ACT_POSITIONS:
                # Unbiased estimate of the sum on a fixed-size random subset of positions: the quantization
                # error of every candidate is evaluated on these positions only.
                pick = torch.randint(0, values.numel(), (_ACT_POSITIONS,), generator=self.generator(values.device),
                                     device=values.device)
                scale = values.numel() / _ACT_POSITIONS
                values, g = values[pick], g[pick]
            g2 = g.float().pow(2)
            errs = torch.stack([(self._quantized(quantizer, c, x, values, pick) - values).pow(2)
                                for c in self.candidates[name]])
            omegas = (errs * g2).sum(dim=1).mul_(0.5 * scale)  # [candidates], stays on the device
            if name in self.act_sums:
                self.act_sums[name] += omegas
            else:
                self.act_sums[name] = omegas
        return hook

    def _weight_grad_hook(self, name, layer, x):
        def hook(grad):
            g = grad.detach().float()
            if isinstance(layer, QuantConv2d):
                cols = F.unfold(x.float(), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                cols = cols.transpose(1, 2)  # [B, T, C*k*k]
                g = g.flatten(2).transpose(1, 2)  # [B, T, out]
            else:
                cols = x.float()
                if cols.dim() == 2:
                    cols, g = cols[:, None], g[:, None]
                cols = cols.reshape(cols.shape[0], -1, cols.shape[-1])
                g = g.reshape(g.shape[0], -1, g.shape[-1])
            per_image = torch.einsum("bto,bti->boi", g, cols)
            sq = per_image.pow(2).sum(0)
            if name in self.fisher:
                self.fisher[name] += sq
            else:
                self.fisher[name] = sq
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _per_image_loss(logits: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Summed cross-entropy to ``labels``, or to one label per image sampled from the model's own softmax on the
    logits' device with ``generator`` (a generator of that device)."""
    if labels is not None:
        targets = labels.to(logits.device)
    else:
        probs = logits.detach().float().softmax(-1)
        targets = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return F.cross_entropy(logits, targets, reduction="sum")


@torch.no_grad()
def measure_kl(
    qmodel: nn.Module, images: torch.Tensor, float_logits: torch.Tensor, batch_size: int = 64
) -> float:
    """Mean KL(float || quantized) in nats per image of ``qmodel`` in its current state on ``images``."""
    logits = predict_logits(qmodel, images, batch_size)
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(float_logits, 1), log_target=True,
                    reduction="batchmean").item()


def compute_sensitivity(
    qmodel: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    candidate_wbits: Sequence[int] = (2, 3, 4, 5, 6, 8),
    candidate_abits: Sequence[int] = (3, 4, 5, 6, 8),
    type_aware: bool = True,
    reference_bits: tuple[int, int] = (4, 4),
    alpha_images: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    forms: Sequence[str] = (),
) -> SensitivityTable:
    """Fisher sensitivity table of a calibrated wrapped model.

    images: [N,3,H,W] calibration images; labels: optional int64 [N] (cross-entropy instead of KL).
    The model's bit settings and enable flags are restored afterwards.
    A model wrapped for a deployment target (``quant.wrap.wrap_model_(target=...)``) gets a target table: the
    candidates are its forms restricted to the names in ``forms`` (empty: all; ``candidate_wbits``/
    ``candidate_abits`` are then unused) and ``reference_bits`` is read as the reference form's key.
    """
    layers = quant_layers(qmodel)
    target, block_size = model_target(qmodel)
    layer_forms = None
    if target != "sim":
        layer_forms = {n: forms_for(target, l.component, tuple(forms)) for n, l in layers.items()}
    saved_flags = {n: (l.weight_quantizer.enabled if l.has_weight else None,
                       [q.enabled for q in l.activation_quantizers()]) for n, l in layers.items()}
    params = list(qmodel.parameters())
    saved_grad = [p.requires_grad for p in params]
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    set_quant_enabled_(qmodel, False, False)
    for p in params:
        p.requires_grad_(False)
    hooks = _FisherHooks(layers, candidate_abits, seed, forms=layer_forms, block_size=block_size)
    n_images = len(images)
    try:
        for start in range(0, n_images, batch_size):
            batch = images[start : start + batch_size].to(device).requires_grad_(True)
            logits = qmodel(batch)
            loss = _per_image_loss(logits, None if labels is None else labels[start : start + batch_size], generator)
            loss.backward()
            if progress:
                progress(0.8 * min(start + batch_size, n_images) / n_images)
    finally:
        hooks.remove()
        for p, flag in zip(params, saved_grad):
            p.requires_grad_(flag)

    act = {name: {b: v / n_images for b, v in d.items()} for name, d in hooks.act.items()}
    if layer_forms is not None:
        table = _target_table(layers, hooks, act, layer_forms, n_images, target, block_size, labels is not None,
                              reference_bits)
    else:
        table = _sim_table(layers, hooks, act, candidate_wbits, n_images, labels is not None, reference_bits)
    if type_aware:
        _calibrate_type_factors(qmodel, table, images[:alpha_images], reference_bits, batch_size)
    for name, (wflag, aflags) in saved_flags.items():
        layer = layers[name]
        if layer.has_weight:
            layer.weight_quantizer.enabled = wflag
        for q, flag in zip(layer.activation_quantizers(), aflags):
            q.enabled = flag
    if progress:
        progress(1.0)
    return table


def _sim_table(layers, hooks: _FisherHooks, act, candidate_wbits, n_images: int, labelled: bool,
               reference_bits) -> SensitivityTable:
    weight: dict[str, dict[int, float]] = {}
    wbits = [b for b in candidate_wbits if b < FLOAT_BITS]
    omegas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            weight[name] = {}
            if not layer.has_weight or name not in hooks.fisher or not wbits:
                continue
            fisher = hooks.fisher[name].reshape(layer.weight.shape) / n_images
            w = layer.weight.detach().float()
            omegas[name] = torch.stack([0.5 * (fisher * (layer.weight_quantizer.quantize_at(w, bits) - w).pow(2)).sum()
                                        for bits in wbits])  # on the device; read back once below
    if omegas:
        names = list(omegas)
        values = torch.stack([omegas[n] for n in names]).tolist()  # one device-to-host copy
        for name, row in zip(names, values, strict=True):
            weight[name] = dict(zip(wbits, row, strict=True))
    return SensitivityTable(
        components={n: l.component for n, l in layers.items()}, weight=weight, act=act,
        loss="cross_entropy" if labelled else "kl", reference_bits=reference_bits,
    )


def _weight_layout(form: Form, block_size: int) -> dict:
    """``quantize_at`` keywords of a form's weight quantizer."""
    return {"block_size": block_size if form.weights == "block" else None, "symmetric": form.weights == "channel"}


@torch.no_grad()
def _target_table(layers, hooks: _FisherHooks, act, layer_forms: dict[str, tuple[Form, ...]], n_images: int,
                  target: str, block_size: int, labelled: bool, reference_bits) -> SensitivityTable:
    """Omega per layer and form (module doc): weight part with the form's weight layout, activation part from
    the hooks (forms with float inputs: 0)."""
    omegas: dict[str, dict[str, torch.Tensor]] = {}
    for name, layer in layers.items():
        fisher = hooks.fisher.get(name)
        per_layout: dict[tuple, torch.Tensor] = {}
        omegas[name] = {}
        for form in layer_forms[name]:
            if form.weights == "float" or not layer.has_weight or fisher is None:
                continue
            layout = _weight_layout(form, block_size)
            key = (form.wbits, layout["block_size"], layout["symmetric"])
            if key not in per_layout:
                w = layer.weight.detach().float()
                f = fisher.reshape(layer.weight.shape) / n_images
                wq = layer.weight_quantizer.quantize_at(w, form.wbits, **layout)
                per_layout[key] = 0.5 * (f * (wq - w).pow(2)).sum()
            omegas[name][form.name] = per_layout[key]
    flat = [(n, f, v) for n, d in omegas.items() for f, v in d.items()]
    values = torch.stack([v for _, _, v in flat]).tolist() if flat else []  # one device-to-host copy
    form_weight = {n: {f.name: 0.0 for f in layer_forms[n]} for n in layers}
    for (name, form, _), value in zip(flat, values, strict=True):
        form_weight[name][form] = value
    form_act = {n: {f.name: float(act[n].get(f.name, 0.0)) for f in layer_forms[n]} for n in layers}
    return SensitivityTable(
        components={n: l.component for n, l in layers.items()}, weight={n: {} for n in layers},
        act={n: {} for n in layers}, loss="cross_entropy" if labelled else "kl",
        reference_bits=tuple(reference_bits), target=target, block_size=block_size, form_weight=form_weight,
        form_act=form_act,
    )


def _nearest(bits: int, available: Sequence[int]) -> int:
    return min(available, key=lambda b: (abs(b - bits), b))


def _reference_pair(table: SensitivityTable, name: str, ref_w: int, ref_a: int) -> tuple[int, int]:
    """Target tables: the key of the reference form of a layer: the form of ``(ref_w, ref_a)`` when it was
    computed, else the first computed quantized form, else fp32."""
    computed = [f for f in forms_for(table.target, table.components[name]) if f.name in table.form_weight[name]]
    try:
        reference = table.form_of(name, ref_w, ref_a)
    except FormError:
        reference = None
    if reference is not None and reference.name in table.form_weight[name]:
        return reference.wbits, reference.abits
    quantized = [f for f in computed if f.name != "fp32"]
    form = quantized[0] if quantized else None
    return (form.wbits, form.abits) if form is not None else (FLOAT_BITS, FLOAT_BITS)


def _calibrate_type_factors(qmodel, table: SensitivityTable, images, reference_bits, batch_size) -> None:
    layers = quant_layers(qmodel)
    saved_bits = {n: (l.wbits, l.abits) for n, l in layers.items()}
    set_quant_enabled_(qmodel, False, False)
    float_logits = predict_logits(qmodel, images, batch_size)
    ref_w, ref_a = reference_bits
    for component in sorted(set(table.components.values())):
        members = [n for n, c in table.components.items() if c == component]
        predicted = 0.0
        for name in members:
            layer = layers[name]
            if table.target != "sim":
                w, a = _reference_pair(table, name, ref_w, ref_a)
            else:
                w = _nearest(ref_w, list(table.weight[name])) if table.weight[name] else FLOAT_BITS
                a = _nearest(ref_a, list(table.act[name]))
            predicted += table.omega(name, w, a, type_aware=False)
            layer.set_bits(w if layer.has_weight else None, a)
            layer.set_quant_enabled(True, True)
        measured = measure_kl(qmodel, images, float_logits, batch_size)
        for name in members:
            layers[name].set_quant_enabled(False, False)
        table.measured_type_kl[component] = measured
        if predicted <= 1e-12 or measured <= 0:
            table.type_factors[component] = 1.0
        else:
            ratio = measured / predicted
            table.type_factors[component] = float(min(max(ratio, _ALPHA_RANGE[0]), _ALPHA_RANGE[1]))
    for name, (w, a) in saved_bits.items():
        layers[name].set_bits(w if layers[name].has_weight else None, a)


def sensitivity_stage(qmodel, float_model, calib, config, progress) -> dict:
    """Pipeline stage: the sensitivity table of ``qmodel`` on the calibration images, as a JSON-able dict."""
    method = config.method
    extra = {}
    if model_target(qmodel)[0] != "sim":
        extra = {"forms": _target_forms(qmodel, method), "reference_bits": (8, 8)}
    table = compute_sensitivity(
        qmodel, calib.images, calib.labels,
        candidate_wbits=method.candidate_wbits, candidate_abits=method.candidate_abits,
        type_aware=method.type_aware, batch_size=min(config.data.batch_size, 32), seed=config.seed,
        progress=progress, **extra,
    )
    del float_model
    return {"table": table.to_dict(), "type_aware": method.type_aware, "images": len(calib)}



def _target_forms(qmodel, method) -> tuple[str, ...]:
    """Form names whose Omegas a target job needs: ``method.forms`` (empty: all) plus the forms of the fixed
    layers and of ``head_bits`` (the allocation keeps those whatever ``forms`` allows)."""
    if not method.forms:
        return ()
    names = dict.fromkeys(method.forms)
    layers = quant_layers(qmodel)
    pairs = [(layers[n].component, tuple(bits)) for n, bits in method.fixed_layers.items() if n in layers]
    if method.head_bits is not None:
        pairs += [(c, (method.head_bits, method.head_bits)) for c in ("patch_embed", "head")]
    for component, (wbits, abits) in pairs:
        try:
            names[form_for_bits(method.target, component, wbits, abits).name] = None
        except FormError:
            continue
    return tuple(names)
