"""The sensitivity table: LampQ's predicted loss increase (Omega) per layer and candidate, with type factors.

``weight[layer][bits]`` and ``act[layer][bits]`` are raw Omegas (nats per image) of the ``sim`` target: the weight
part depends only on the weight bits and the input part only on the input bits, because the parameter table's entry
of a pair ``(w, a)`` is composed of the layer's ``w``-bit weight params and ``a``-bit input params
(``quant.calibration``). ``omega(layer, w, a)`` adds them and applies the component's type factor and the layer's
factor (the iterative update). Runtime targets key the raw Omegas by form name (``form_weight``/``form_act``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..quantizers import FLOAT_BITS
from ..target import Form, form_for_bits

__all__ = ["SensitivityTable"]


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
    #: ``{component: {key: factor}}``: the type factor at one width; keys ``w{bits}``/``a{bits}`` on ``sim`` (the
    #: weight and the input part are scaled separately), form names on runtime targets. Missing keys fall back to
    #: ``type_factors`` (measured at the reference pair).
    width_factors: dict[str, dict[str, float]] = field(default_factory=dict)
    #: measured KL of the whole model at its reference entries and what the factors predict for it (a check).
    model_check: dict[str, float] = field(default_factory=dict)

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
        component = self.components[layer]
        base = self.type_factors.get(component, 1.0) if type_aware else 1.0
        widths = self.width_factors.get(component, {}) if type_aware else {}
        if form is not None:
            raw = self.form_weight.get(layer, {}).get(form.name, 0.0) + self.form_act.get(layer, {}).get(form.name, 0.0)
            value = raw * widths.get(form.name, base)
        else:
            raw_w = self.weight[layer].get(wbits, 0.0) if wbits < FLOAT_BITS and self.weight[layer] else 0.0
            raw_a = self.act[layer].get(abits, 0.0) if abits < FLOAT_BITS else 0.0
            value = raw_w * widths.get(f"w{wbits}", base) + raw_a * widths.get(f"a{abits}", base)
        return value * self.layer_factors.get(layer, 1.0) * (self.model_factor if type_aware else 1.0)

    @property
    def model_factor(self) -> float:
        """Measured over predicted KL of the whole model at its reference entries (clamped to [0.25, 4]; 1 when not
        measured): what the per-type factors miss of the interactions between types. It scales every Omega alike,
        so it changes the predicted loss, not the allocation."""
        measured, predicted = self.model_check.get("measured_kl"), self.model_check.get("predicted_kl")
        if not measured or not predicted or measured <= 0 or predicted <= 1e-12:
            return 1.0
        return float(min(max(measured / predicted, 0.25), 4.0))

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
            "width_factors": self.width_factors,
            "model_check": self.model_check,
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
            width_factors={c: {k: float(v) for k, v in d.items()} for c, d in data.get("width_factors", {}).items()},
            model_check={k: float(v) for k, v in data.get("model_check", {}).items()},
        )
