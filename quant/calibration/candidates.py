"""Candidate ranges of the output-aware search and the choice among them.

Per group (tensor, token position, head or weight channel) the range is ``[r_lo * min_g, r_hi * max_g]`` with the
ratios from a grid. Instead of scoring the whole ``r_lo x r_hi`` grid, :func:`descend` moves one end at a time
(high, low, high, low, high): about a third of the candidates of the full grid per activation width, which is what
lets calibration search every candidate width of a mixed-precision job. The current range is always candidate 0 of
each step, so the chosen range never has a larger output error on the search data than the fast-fit start. All
candidates of one step are scored in chunks of one batched op (:func:`batched_errors`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..quantizers import AffineParams, fake_quant_uniform, scale_zero
from ..quantizers.uniform import zero_in_range

__all__ = ["ACT_RATIOS", "WEIGHT_RATIOS", "batched_errors", "descend", "grid_bounds", "group_dims", "group_range",
           "pick", "with_group"]

ACT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.28, 0.22)
WEIGHT_RATIOS = tuple(1.0 - 0.05 * i for i in range(14))  # 1.0 .. 0.35


def group_dims(x: torch.Tensor, group_shape: tuple[int, ...]) -> list[int]:
    """Dims of ``x`` reduced for a group statistic: the batch dim and every dim where the group shape is 1."""
    lead = x.dim() - len(group_shape)
    return list(range(lead)) + [lead + i for i, g in enumerate(group_shape) if g == 1]


def group_range(x: torch.Tensor, group_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``(min, max)`` of ``x`` [B, ...] for a group shape matching its trailing dims."""
    dims = group_dims(x, group_shape)
    return x.amin(dim=dims).reshape(group_shape).float(), x.amax(dim=dims).reshape(group_shape).float()


def with_group(params: AffineParams, group_shape: tuple[int, ...], granularity: str) -> AffineParams:
    """``params`` broadcast to ``group_shape`` (per-tensor params become one copy per group)."""
    if not group_shape or tuple(params.scale.shape) == tuple(group_shape):
        return params
    return AffineParams(params.scale.detach().expand(group_shape).clone(),
                        params.zero_point.detach().expand(group_shape).clone(), params.bits, granularity)


def grid_bounds(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of the grid ``(scale, zero)``: its smallest and largest representable values."""
    return (0 - zero) * scale, (2**bits - 1 - zero) * scale


def descend(start: tuple[torch.Tensor, torch.Tensor], base: tuple[torch.Tensor, torch.Tensor], bits: int,
            ratios: tuple[float, ...], errors: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
            include_zero: bool = False, rounds: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate descent over clipping ranges, per group: ``(scale, zero)`` minimising ``errors``.

    start: the starting grid ``(scale, zero)`` [*group]; base: ``(low, high)`` [*group] the ratios scale (the data's
    min and max). Each step keeps one end and tries ``r * base`` for the other end (``r`` in ``ratios``), with the
    current grid as candidate 0, so a group's error never increases; steps alternate high, low, high... for
    ``rounds`` rounds plus a final high step. errors(scales, zeros) maps candidates [K, *group] to errors
    [K, *group]. include_zero: every candidate's range contains 0.
    """
    scale, zero = start[0].float(), start[1].float()
    grid = torch.tensor(ratios, device=scale.device).reshape((-1,) + (1,) * scale.dim())
    for step in range(2 * rounds + 1):
        low, high = grid_bounds(scale, zero, bits)
        if step % 2 == 0:  # move the high end
            highs = grid * base[1].float()
            lows = low.unsqueeze(0).expand_as(highs)
        else:
            lows = grid * base[0].float()
            highs = high.unsqueeze(0).expand_as(lows)
        cand_scale, cand_zero = scale_zero(torch.minimum(lows, highs - 1e-6), highs, bits)
        cand_scale = torch.cat([scale.unsqueeze(0), cand_scale])
        cand_zero = torch.cat([zero.unsqueeze(0), cand_zero])
        if include_zero:
            cand_scale, cand_zero = zero_in_range(cand_scale, cand_zero, bits)
        index = errors(cand_scale, cand_zero).argmin(dim=0)
        scale, zero = pick(cand_scale, index), pick(cand_zero, index)
    return scale, zero


def batched_errors(x: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   error: Callable[[torch.Tensor], torch.Tensor], chunk_elements: int, out_numel: int) -> torch.Tensor:
    """Mean output error [K, *group] of every candidate grid, per group.

    x: [B, *rest] float input. scales/zeros: [K, *group] candidates. error maps quantized inputs [k, B, *rest]
    (k candidates at once) to squared output errors [k, B, *out] whose trailing dims match the group
    positionally (dims of size 1 allowed); ``out_numel`` is the element count of one candidate's error.
    """
    k_total = scales.shape[0]
    group_shape = tuple(scales.shape[1:])
    per_candidate = max(x.numel(), out_numel)
    chunk = max(1, min(k_total, chunk_elements // max(per_candidate, 1)))
    errors = []
    pad = (1,) * (x.dim() - len(group_shape))
    for start in range(0, k_total, chunk):
        s, z = scales[start:start + chunk], zeros[start:start + chunk]
        k = s.shape[0]
        xq = fake_quant_uniform(x.unsqueeze(0), s.reshape(k, *pad, *group_shape), z.reshape(k, *pad, *group_shape),
                                bits)
        err = error(xq)
        lead = err.dim() - 1 - len(group_shape)
        dims = [1 + d for d in range(lead)] + [1 + lead + i for i, g in enumerate(group_shape) if g == 1]
        errors.append(err.mean(dim=dims) if dims else err)
    return torch.cat(errors).reshape(k_total, *group_shape)


def pick(candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``candidates[index[g], g]`` for every group ``g``."""
    return candidates.gather(0, index.unsqueeze(0)).squeeze(0)
