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

from .params import TanQParams
from .ste import round_ste

__all__ = ["fit_tanq", "tanq_fake_quant"]

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


def _tanq_errors(pairs: list[tuple[float, float]], bits: int, target: torch.Tensor, values: torch.Tensor | None,
                 reference: torch.Tensor | None) -> torch.Tensor:
    """Error of every ``(a, c)`` in ``pairs`` (float64 constants on the target's device), in memory-bounded chunks:
    of ``target @ values`` against ``reference`` with values, of ``target`` itself without."""
    grid = torch.tensor(pairs, dtype=torch.float64, device=target.device)
    chunk = max(1, min(len(pairs), (1 << 24) // max(target.numel(), 1)))
    step = 2.0 / (2**bits - 1)
    x = torch.clamp(target, 0.0, 1.0).unsqueeze(0)
    errors = []
    for start in range(0, len(pairs), chunk):
        a, c = grid[start:start + chunk, 0], grid[start:start + chunk, 1]
        view = (-1,) + (1,) * target.dim()
        t0, t1 = torch.tan(-a * c), torch.tan(a * (1 - c))
        k1, k2 = (2.0 / (t1 - t0)).float().reshape(view), ((t1 - t0) / 2.0).float().reshape(view)
        t0f, af, cf = t0.float().reshape(view), a.float().reshape(view), c.float().reshape(view)
        y = (torch.tan(af * (x - cf)) - t0f) * k1 - 1.0
        yq = torch.clamp(torch.round((y + 1.0) / step) * step - 1.0, -1.0, 1.0)
        out = cf + torch.atan(t0f + (yq + 1.0) * k2) / af
        if reference is not None:
            errors.append(((out @ values) - reference).pow(2).flatten(1).mean(dim=1))
        else:
            errors.append((out - target).pow(2).flatten(1).mean(dim=1))
    return torch.cat(errors)


@torch.no_grad()
def fit_tanq(sample: torch.Tensor, bits: int, maps: torch.Tensor | None = None,
             values: torch.Tensor | None = None) -> TanQParams:
    """Search ``(a, c)`` for ``bits``: per centre ``c``, every 4th ``a`` of the grid, then the neighbours of the best.

    With attention ``maps`` [B, H, N, N] and the ``values`` [B, H, N, d] they multiply, the objective is the error
    of ``maps @ values`` (what the next layer sees; MSE on [0, 1] map values would let the few large entries
    dominate); otherwise the MSE of the 1-D ``sample`` of map values.
    """
    if maps is not None and maps.numel():
        target, values = maps.float(), values.float()
        reference = target @ values
    else:
        target, values, reference = torch.clamp(sample.float(), 0.0, 1.0), None, None
    coarse = [i for c in range(len(_CENTRES)) for i in range(c * _A_STEPS, (c + 1) * _A_STEPS, 4)]
    errors = _tanq_errors([_GRID[i] for i in coarse], bits, target, values, reference)
    best = {}
    for index, error in zip(coarse, errors.tolist(), strict=True):
        centre = index // _A_STEPS
        if centre not in best or error < best[centre][1]:
            best[centre] = (index, error)
    fine = sorted({j for index, _ in best.values() for j in range(index - 3, index + 4)
                   if index // _A_STEPS == j // _A_STEPS and 0 <= j < len(_GRID)})
    errors = _tanq_errors([_GRID[j] for j in fine], bits, target, values, reference)
    a_best, c_best = _GRID[fine[int(errors.argmin())]]
    device = target.device
    return TanQParams(torch.tensor(a_best, device=device), torch.tensor(c_best, device=device), int(bits))
