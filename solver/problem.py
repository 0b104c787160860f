"""Input types: a bit-allocation problem is layers x candidates plus budgets.

Units are whatever the caller uses, as long as a budget's limit and the costs it names share them; the cost
helpers in :mod:`solver.costs` produce bytes (``"size"``), bit-operations (``"bops"``), normalised average bits
(``"wbits"``, ``"abits"``) and milliseconds (``"latency"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "Layer", "Problem"]


@dataclass(frozen=True)
class Candidate:
    """One (weight bits, activation bits) choice for one layer.

    Attributes:
        wbits: weight bit-width (a positive int; weightless layers such as attention matmuls use a placeholder,
            e.g. 16, and differ only by ``abits``).
        abits: activation bit-width (positive int).
        sensitivity: predicted loss increase when the layer takes this candidate (finite; usually >= 0).
        costs: budget name -> cost of this layer with this candidate (finite, >= 0, in the budget's unit). A cost
            that a layer's candidates all omit counts as 0 for that layer.
    """

    wbits: int
    abits: int
    sensitivity: float
    costs: Mapping[str, float]

    @property
    def pair(self) -> tuple[int, int]:
        """The ``(wbits, abits)`` pair that identifies this candidate within its layer."""
        return (self.wbits, self.abits)


@dataclass(frozen=True)
class Layer:
    """A quantizable layer and the candidates it may take.

    Attributes:
        name: unique layer name (timm module names, e.g. ``blocks.3.attn.qkv``).
        candidates: the choices; their ``(wbits, abits)`` pairs must be distinct.
        fixed: a ``(wbits, abits)`` pair among the candidates that the layer must take, or None.
        tie: layers sharing the same tie group name must all take the same ``(wbits, abits)`` pair.
    """

    name: str
    candidates: Sequence[Candidate]
    fixed: tuple[int, int] | None = None
    tie: str | None = None


@dataclass(frozen=True)
class Problem:
    """Minimise the summed sensitivity subject to ``sum over layers of cost[name] <= budgets[name]``.

    Attributes:
        layers: the layers, each taking exactly one candidate.
        budgets: budget name -> upper limit (finite, > 0) on the sum of that cost over all layers.
    """

    layers: Sequence[Layer]
    budgets: Mapping[str, float]
