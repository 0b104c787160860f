"""What a job's calibration must produce: the params keys each layer needs and how a bit pair composes them.

A *candidate* of a layer is a bit pair ``(wbits, abits)`` (16 = float): any allowed pair on the ``sim`` target, the
``(wbits, abits)`` key of one of its forms on a runtime target (``quant.target``). Its params are composed of

- one weight entry, keyed ``WeightKey(bits, layout, block_size)``: ``channel`` (sim), ``symmetric`` (the ``int8``
  form) or ``block`` (``w8``/``w4``/``w4a8``); none for float weights and weightless layers;
- one entry per input operand, keyed ``ActKey(bits, mode)``: ``static`` (a calibrated grid; on the ``sim`` target
  the post-softmax operand of ``matmul_av`` uses the recipe's softmax quantizer, uniform, log2 or TanQ) or
  ``dynamic`` (``w4a8``'s int8 blocks, nothing to calibrate); none for float inputs.

Entries are shared: ``(3, 4)`` and ``(3, 6)`` use the same 3-bit weight params. The plan also names each layer's
*reference* pair, the partner width the output-aware search quantizes the other operand at (``quant.calibration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..quantizers import FLOAT_BITS
from ..target import form_for_bits

__all__ = ["SOFTMAX_KINDS", "ActKey", "CalibrationPlan", "LayerPlan", "WeightKey", "layer_plan"]

#: Post-softmax quantizer kinds of the ``sim`` target.
SOFTMAX_KINDS = ("uniform", "log2", "tanq")


@dataclass(frozen=True, order=True)
class WeightKey:
    """Weight params of one bit-width and layout (``block_size`` only for ``block``)."""

    bits: int
    layout: str = "channel"
    block_size: int | None = None

    def name(self) -> str:
        return f"w{self.bits}{'' if self.layout == 'channel' else '_' + self.layout}" + \
            (f"{self.block_size}" if self.block_size else "")


@dataclass(frozen=True, order=True)
class ActKey:
    """Input params of one bit-width: ``static`` (calibrated) or ``dynamic`` (int8 blocks at run time)."""

    bits: int
    mode: str = "static"

    def name(self) -> str:
        return f"a{self.bits}{'' if self.mode == 'static' else '_' + self.mode}"


@dataclass(frozen=True)
class LayerPlan:
    """One layer's needs: its candidate ``pairs``, each pair's ``(weight key or None, (act key or None, ...))``,
    the ``reference`` pair, the kinds of its operands (``uniform``/``log2``/``tanq``) and its component."""

    component: str
    has_weight: bool
    operand_kinds: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    compose: Mapping[tuple[int, int], tuple[WeightKey | None, tuple[ActKey | None, ...]]]
    reference: tuple[int, int]

    @property
    def weight_keys(self) -> tuple[WeightKey, ...]:
        keys = {w for w, _ in self.compose.values() if w is not None}
        return tuple(sorted(keys))

    def act_keys(self, operand: int) -> tuple[ActKey, ...]:
        keys = {acts[operand] for _, acts in self.compose.values() if acts[operand] is not None}
        return tuple(sorted(keys))

    @property
    def reference_keys(self) -> tuple[WeightKey | None, tuple[ActKey | None, ...]]:
        return self.compose[self.reference]


@dataclass(frozen=True)
class CalibrationPlan:
    """Everything calibration needs to know besides the model and the images.

    recipe settings: ``softmax`` kind and ``minmax`` (plain min/max fast fits); ``search``: ``minmax`` (fast fits
    only) or ``output`` (output-aware search on top); ``target``/``block_size``; ``layers``: per layer plan.
    """

    softmax: str
    minmax: bool
    search: str
    target: str
    block_size: int
    layers: Mapping[str, LayerPlan] = field(default_factory=dict)

    @property
    def grouped(self) -> bool:
        """Per-position / per-head activation scales (sim with the output search); runtimes need per tensor."""
        return self.target == "sim" and self.search == "output"


def _compose(target: str, component: str, has_weight: bool, n_inputs: int, pair: tuple[int, int],
             block_size: int) -> tuple[WeightKey | None, tuple[ActKey | None, ...]]:
    wbits, abits = pair
    if target == "sim":
        weight = WeightKey(int(wbits)) if has_weight and wbits < FLOAT_BITS else None
        act = ActKey(int(abits)) if abits < FLOAT_BITS else None
        return weight, (act,) * n_inputs
    form = form_for_bits(target, component, wbits, abits)
    weight = None
    if has_weight and form.weights == "channel":
        weight = WeightKey(form.wbits, "symmetric")
    elif has_weight and form.weights == "block":
        weight = WeightKey(form.wbits, "block", block_size)
    act = {"float": None, "static": ActKey(form.abits), "dynamic_block": ActKey(8, "dynamic")}[form.activations]
    return weight, (act,) * n_inputs


def layer_plan(component: str, has_weight: bool, n_inputs: int, pairs, reference: tuple[int, int], *,
               target: str, softmax: str, block_size: int) -> LayerPlan:
    """The plan of one layer: ``pairs`` (its candidates) and ``reference`` (added to the pairs when missing).
    Raises ``quant.target.FormError`` for a pair a runtime target cannot execute."""
    def norm(pair):
        w, a = int(pair[0]), int(pair[1])
        return (FLOAT_BITS if not has_weight else w, a)

    ordered = tuple(dict.fromkeys(norm(p) for p in (*pairs, reference)))
    compose = {pair: _compose(target, component, has_weight, n_inputs, pair, block_size) for pair in ordered}
    kinds = ["uniform"] * n_inputs
    if component == "matmul_av" and target == "sim":
        kinds[0] = softmax
    return LayerPlan(component, has_weight, tuple(kinds), ordered, compose, norm(reference))
