"""Cost helpers: per-layer facts -> ``Candidate.costs`` for the standard budgets.

Budget names and units produced by :class:`CostModel`:

- ``"size"``: weight storage in bytes (:func:`weight_bytes`), summed over layers; the limit is bytes.
- ``"bops"``: bit-operations (:func:`bops`), MACs x weight bits x activation bits; the limit is BOPs.
- ``"wbits"``: ``n_params_l * wbits / total_params``. The sum over layers is the parameter-weighted average
  weight bit-width, so the limit *is* the average (e.g. 4.0) and the constraint stays linear:
  ``sum_l n_params_l * wbits_l <= B * sum_l n_params_l``.
- ``"abits"``: the same with activation element counts: the limit is the element-weighted average activation
  bit-width.
- ``"latency"``: milliseconds looked up in a per-layer table ``{(wbits, abits): ms}``; layers without a table
  contribute 0.

Weightless layers (``n_params == 0``: the attention matmuls ``q @ k^T`` and ``attn @ v``) have both operands
quantized to ``abits``: their BOPs are ``macs * abits * abits``, their size and ``wbits`` costs are 0, and their
``wbits`` is only a placeholder (e.g. 16) chosen by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import SolverInputError
from .problem import Candidate, Layer

__all__ = ["CostModel", "LayerFacts", "bops", "weight_bytes"]


def _nonneg(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise SolverInputError(f"{name} must be a finite number >= 0, got {value!r}")


def _bits(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SolverInputError(f"{name} must be a positive int, got {value!r}")


def weight_bytes(
    n_params: int, out_channels: int, wbits: int, scale_bits: int = 16, zero_point_bits: int | None = None
) -> float:
    """Bytes to store a layer's weights at ``wbits``.

    Below 16 bits: ``n_params * wbits`` bits of packed integers plus, per output channel, one scale of
    ``scale_bits`` bits (float16 by default) and one zero point of ``zero_point_bits`` bits (default: ``wbits``,
    an integer in the weights' range). At 16 bits or more: plain floating-point storage, ``n_params * wbits``
    bits, no overhead. Result in bytes = bits / 8, not rounded up to whole bytes.
    """
    _nonneg("n_params", n_params)
    _nonneg("out_channels", out_channels)
    _bits("wbits", wbits)
    _bits("scale_bits", scale_bits)
    if wbits >= 16:
        return n_params * wbits / 8.0
    zp = wbits if zero_point_bits is None else zero_point_bits
    _bits("zero_point_bits", zp)
    return (n_params * wbits + out_channels * (scale_bits + zp)) / 8.0


def bops(macs: float, wbits: int, abits: int) -> float:
    """Bit-operations of a layer: ``macs * wbits * abits`` (MACs per forward pass of one input)."""
    _nonneg("macs", macs)
    _bits("wbits", wbits)
    _bits("abits", abits)
    return float(macs) * wbits * abits


@dataclass(frozen=True)
class LayerFacts:
    """What the cost helpers need to know about one layer.

    Attributes:
        name: layer name (as in :class:`solver.Layer`).
        n_params: weight parameter count (0 for attention matmuls).
        out_channels: output channels (one scale and zero point each); 0 for weightless layers.
        macs: multiply-accumulates per forward pass of one input.
        n_activation_elements: elements of the quantized input activation(s) per forward pass of one input
            (both operands for a matmul).
        latency_ms: optional table ``{(wbits, abits): milliseconds}``.
    """

    name: str
    n_params: int
    out_channels: int
    macs: float
    n_activation_elements: int
    latency_ms: Mapping[tuple[int, int], float] | None = None


class CostModel:
    """Turns :class:`LayerFacts` into ``Candidate.costs`` for the budgets ``size``, ``bops``, ``wbits``,
    ``abits`` (and ``latency`` for layers with a table); see the module docstring for the units."""

    def __init__(
        self, layers: Sequence[LayerFacts], *, scale_bits: int = 16, zero_point_bits: int | None = None
    ):
        self.facts = {f.name: f for f in layers}
        if len(self.facts) != len(layers):
            raise SolverInputError("CostModel: duplicate layer names")
        for f in layers:
            for attr in ("n_params", "out_channels", "macs", "n_activation_elements"):
                _nonneg(f"layer {f.name!r}: {attr}", getattr(f, attr))
        self.scale_bits = scale_bits
        self.zero_point_bits = zero_point_bits
        self.total_params = sum(f.n_params for f in layers)
        self.total_activation_elements = sum(f.n_activation_elements for f in layers)

    def costs(self, name: str, wbits: int, abits: int) -> dict[str, float]:
        """Costs of layer ``name`` at ``(wbits, abits)``: bytes, BOPs, normalised bits, milliseconds."""
        f = self.facts[name]
        weightless = f.n_params == 0
        out = {
            "size": 0.0
            if weightless
            else weight_bytes(f.n_params, f.out_channels, wbits, self.scale_bits, self.zero_point_bits),
            "bops": bops(f.macs, abits if weightless else wbits, abits),
            "wbits": f.n_params * wbits / self.total_params if self.total_params else 0.0,
            "abits": (
                f.n_activation_elements * abits / self.total_activation_elements
                if self.total_activation_elements
                else 0.0
            ),
        }
        if f.latency_ms is not None:
            if (wbits, abits) not in f.latency_ms:
                raise SolverInputError(f"layer {name!r}: latency table has no entry for {(wbits, abits)}")
            out["latency"] = float(f.latency_ms[(wbits, abits)])
        return out

    def candidates(self, name: str, sensitivities: Mapping[tuple[int, int], float]) -> list[Candidate]:
        """One :class:`Candidate` per ``(wbits, abits) -> sensitivity`` entry, in the mapping's order."""
        return [Candidate(w, a, float(s), self.costs(name, w, a)) for (w, a), s in sensitivities.items()]

    def layer(
        self,
        name: str,
        sensitivities: Mapping[tuple[int, int], float],
        *,
        fixed: tuple[int, int] | None = None,
        tie: str | None = None,
    ) -> Layer:
        """A :class:`Layer` with candidates from :meth:`candidates`."""
        return Layer(name, self.candidates(name, sensitivities), fixed=fixed, tie=tie)

    def budgets(
        self,
        *,
        avg_wbits: float | None = None,
        avg_abits: float | None = None,
        size_bytes: float | None = None,
        bops: float | None = None,
        latency_ms: float | None = None,
    ) -> dict[str, float]:
        """A ``Problem.budgets`` mapping with the given limits (None: no such budget)."""
        pairs = {
            "wbits": avg_wbits,
            "abits": avg_abits,
            "size": size_bytes,
            "bops": bops,
            "latency": latency_ms,
        }
        return {k: float(v) for k, v in pairs.items() if v is not None}
