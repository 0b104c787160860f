"""TanQ (DopQ-ViT): tangent companding quantizer for post-softmax attention maps.

DopQ-ViT's compander ``y = tan(a (x - 1/2)) / tan(a / 2)`` maps [0, 1] onto [-1, 1] with the largest slope at
both ends; ``y`` is quantized uniformly to ``2^bits`` levels (both ends exact) and expanded back with
``x = 1/2 + atan(y tan(a/2)) / a``. ``a`` in (0, pi) is searched per layer on calibration data: a -> 0 gives a
uniform quantizer, a -> pi concentrates levels near 0 and 1.

Our generalisation (documented choice): a centre ``c`` replaces 1/2, ``y`` is the affine map of
``tan(a (x - c))`` from ``[tan(-a c), tan(a (1 - c))]`` onto [-1, 1], with ``a max(c, 1 - c) < pi/2``.
``c = 1/2`` is exactly the paper's TanQ; ``c -> 1`` moves resolution towards 0 (log-like), which measured
better on real attention maps at 3 bits where 8 levels cannot serve both ends. ``(a, c)`` are searched together.
"""

from __future__ import annotations

import math

import torch

from .base import ActivationQuantizer, round_ste

__all__ = ["TanQuantizer", "tanq_fake_quant"]

_CENTRES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
_A_STEPS = 32


def _grid() -> tuple[tuple[float, float], ...]:
    pairs = []
    for c in _CENTRES:
        a_max = (math.pi / 2) / max(c, 1 - c) * 0.995
        pairs += [(0.05 + i * (a_max - 0.05) / (_A_STEPS - 1), c) for i in range(_A_STEPS)]
    return tuple(pairs)


_GRID = _grid()


def _constants(a, c):
    """``t0 = tan(-a c)``, ``t1 = tan(a (1 - c))``, ``2 / (t1 - t0)`` and ``(t1 - t0) / 2``: python floats for
    float ``a``/``c``; for tensors, computed in float64 on their device and rounded to float32 (the same values
    as the python-float path, with no host sync)."""
    if isinstance(a, torch.Tensor) or isinstance(c, torch.Tensor):
        device = a.device if isinstance(a, torch.Tensor) else c.device
        a64 = torch.as_tensor(a, device=device).double()
        c64 = torch.as_tensor(c, device=device).double()
        t0, t1 = torch.tan(-a64 * c64), torch.tan(a64 * (1 - c64))
        values = torch.stack([t0, t1, 2.0 / (t1 - t0), (t1 - t0) / 2.0, a64, c64]).float()
        return values.unbind(0)
    t0, t1 = math.tan(-a * c), math.tan(a * (1 - c))
    return t0, t1, 2.0 / (t1 - t0), (t1 - t0) / 2.0, a, c


class _TanQ(torch.autograd.Function):
    """TanQ with its straight-through gradient computed in the forward pass (one product in backward).

    d out / d x = [0 < x < 1, -1 < yq < 1] * (1 + tan(u)^2) / (1 + w^2) with ``u = a (x - c)`` and ``w`` the argument of the
    final ``atan`` (the chain rule through compand, straight-through rounding and expand; the affine factors
    cancel)."""

    @staticmethod
    def forward(ctx, x, a, c, t0, k1, k2, step, bits):
        tan_u = torch.tan(a * (torch.clamp(x, 0.0, 1.0) - c))
        y = (tan_u - t0) * k1 - 1.0
        yr = torch.round((y + 1.0) / step) * step - 1.0
        yq = torch.clamp(yr, -1.0, 1.0)
        w = t0 + (yq + 1.0) * k2
        out = c + torch.atan(w) / a
        # torch.clamp's backward (both clamps): gradients strictly inside the bounds
        inside = ((x > 0.0) & (x < 1.0) & (yr > -1.0) & (yr < 1.0)).to(x.dtype)
        ctx.save_for_backward(inside.mul_(tan_u.square_().add_(1.0)).div_(w.square_().add_(1.0)))
        return out

    @staticmethod
    def backward(ctx, grad):
        (deriv,) = ctx.saved_tensors
        return grad * deriv, None, None, None, None, None, None, None


def tanq_fake_quant(x: torch.Tensor, a, bits: int, c=0.5) -> torch.Tensor:
    """Compand, quantize uniformly to ``2^bits`` levels on [-1, 1], expand. ``x`` in [0, 1] (clamped).

    ``a``/``c``: python floats or 0-dim tensors on ``x``'s device (no host sync). With autograd on, a fused
    function with the straight-through gradient is used (same values)."""
    t0, _t1, k1, k2, a, c = _constants(a, c)
    step = 2.0 / (2**bits - 1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _TanQ.apply(x, a, c, t0, k1, k2, step, bits)
    x = torch.clamp(x, 0.0, 1.0)
    y = (torch.tan(a * (x - c)) - t0) * k1 - 1.0
    yq = torch.clamp(round_ste((y + 1.0) / step) * step - 1.0, -1.0, 1.0)
    return c + torch.atan(t0 + (yq + 1.0) * k2) / a


class TanQuantizer(ActivationQuantizer):
    """TanQ fake quantizer; ``fit`` searches ``a`` on a grid.

    objective ``output`` (default): minimise the error of ``maps @ values`` on the attention products kept by
    ``observe_product`` (falls back to the map MSE when none were kept); ``map``: minimise the MSE of the map.
    """

    fit_params = ("a", "c")
    kind = "tanq"

    def __init__(self, bits: int = 8, a: float = 2.0, objective: str = "output") -> None:
        super().__init__(bits)
        if objective not in ("output", "map"):
            raise ValueError(f"TanQ objective must be 'output' or 'map', got {objective!r}")
        self.objective = objective
        self.register_buffer("a", torch.tensor(float(a)))
        self.register_buffer("c", torch.tensor(0.5))
        self.register_buffer("product_maps", torch.empty(0), persistent=False)
        self.register_buffer("product_values", torch.empty(0), persistent=False)

    def observe_product(self, maps: torch.Tensor, values: torch.Tensor, images: int = 2) -> None:
        """Keep a few attention maps [B,H,N,N] and the values [B,H,N,d] they multiply (first call only).

        With them, ``fit`` scores ``a`` by the error of ``maps @ values`` (what the next layer sees) instead of
        the error of the map itself, which MSE on [0, 1] values would let the few large entries dominate.
        """
        if self.product_maps.numel() == 0:
            self.product_maps = maps[:images].detach().float().clone()
            self.product_values = values[:images].detach().float().clone()

    @torch.no_grad()
    def fit(self, sample: torch.Tensor) -> None:
        if self.objective == "output" and self.product_maps.numel():
            maps, values = self.product_maps, self.product_values
            reference = maps @ values

            def error(ac: tuple[float, float]) -> float:
                return ((tanq_fake_quant(maps, ac[0], self.bits, ac[1]) @ values) - reference).pow(2).mean().item()
        else:
            sample = torch.clamp(sample.float(), 0.0, 1.0)

            def error(ac: tuple[float, float]) -> float:
                return (tanq_fake_quant(sample, ac[0], self.bits, ac[1]) - sample).pow(2).mean().item()

        best_a, best_c = min(_GRID, key=error)
        self.a = torch.tensor(best_a, device=self.a.device)
        self.c = torch.tensor(best_c, device=self.c.device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return tanq_fake_quant(x, self.a, self.bits, self.c)  # tensors: no host sync

    def describe(self) -> dict:
        info = super().describe()
        info["a"] = float(self.a)
        info["c"] = float(self.c)
        return info
