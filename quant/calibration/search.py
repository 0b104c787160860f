"""Output-aware range search of one layer at every width it needs: ranges chosen by the error they cause in the
layer's output, all widths scored on one captured input set.

For a linear layer (or the patch convolution), with float input ``X`` and weight ``W``:

1. **activations**: for every input width ``a``, every candidate range (``quant.calibration.candidates``) is scored by
   ``|op(fq_a(X), Wq_ref) - op(X, W)|^2``, the weight quantized at the layer's reference width. With ``grouped``
   (sim target), linear inputs get one range per token position (``[N, 1]`` for ``[B, N, C]`` inputs) and the
   choice is made per position (positions are separable in the error, so this is the exact joint optimum).
2. **weights** (per output channel, every non-block width ``w``): with the input quantized at the reference width's
   searched range, the error of channel ``o`` is the quadratic form ``w_o^T G_ff w_o - 2 wq^T G_qf w_o +
   wq^T G_qq wq`` of the input Gram matrices, so all candidates of all channels are one batched matmul
   ``[K, O, C] @ [C, C]``; the Gram matrices are computed once for all widths.

For an attention matmul ``a @ b``: every width of ``a``'s range is scored against ``b`` quantized at the reference
width, then every width of ``b``'s against the searched ``a`` at the reference width; with ``grouped``, q, k and v get
one range per head (``[H, 1, 1]``). Post-softmax log2/TanQ operands keep their own fit (TanQ already scores
``maps @ v``). Block-wise weights keep their per-block fit (the output error does not separate per block), and
dynamic inputs have no range. For a job with one candidate the reference is that candidate, so this is one
alternation of activation then weight search at that width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modules import QuantConv2d, QuantLayer, QuantLinear
from ..quantizers import AffineParams, WeightParams, fake_quant, fake_quant_uniform, quantize_weight
from .candidates import ACT_RATIOS, WEIGHT_RATIOS, batched_errors, descend, group_range, with_group
from .capture import OperandStats
from .plan import ActKey, WeightKey

__all__ = ["SearchSettings", "search_linear", "search_matmul"]


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the output-aware search.

    images: calibration images whose layer inputs are captured (fewer if ``capture_bytes`` would be exceeded).
    act_tokens: at most this many rows (whole images) score the activation candidates of a linear layer.
    matmul_images: images scoring the q/k/v candidates. chunk_elements: bound on the elements of one batched
    candidate tensor (memory per op).
    """

    images: int = 128
    act_tokens: int = 2048
    matmul_images: int = 8
    chunk_elements: int = 1 << 24
    capture_bytes: int = 1 << 30
    act_ratios: tuple[float, ...] = ACT_RATIOS
    weight_ratios: tuple[float, ...] = WEIGHT_RATIOS


def _searchable(params) -> bool:
    return isinstance(params, AffineParams)


def _search_act(start: AffineParams, x: torch.Tensor, group: tuple[int, ...], granularity: str,
                error: Callable[[torch.Tensor], torch.Tensor], out_numel: int, settings: SearchSettings,
                include_zero: bool, stats: OperandStats | None) -> AffineParams:
    start = with_group(start, group, granularity)
    x = x.float()

    def errors(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        return batched_errors(x, scales, zeros, start.bits, error, settings.chunk_elements, out_numel)

    # the candidates clip the range every calibration image showed; the captured subset only scores them
    base = stats.group_range(granularity, group) if stats is not None else group_range(x, group)
    base = tuple(b.to(x.device).float() for b in base)
    scale, zero = descend((start.scale, start.zero_point), base, start.bits, settings.act_ratios, errors,
                          include_zero=include_zero)
    return AffineParams(scale, zero, start.bits, granularity if group else "tensor")


def _op_error(op: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor):
    """Squared error of ``op(xq)`` against ``reference`` (candidates on a leading dim)."""
    return lambda xq: (op(xq) - reference).square_()


def _linear_error(w_q: torch.Tensor, w: torch.Tensor, x: torch.Tensor):
    """Squared output error per row of ``xq @ w_q^T`` against ``x @ w^T`` for candidates ``xq`` [k, *x.shape].

    Uses the Gram form ``xq M xq - 2 xq P x + const`` (``M = w_q^T w_q``, ``P = w_q^T w``) when the layer widens
    (in < out), which costs ``in^2`` instead of ``in * out`` per row; the constant does not change the argmin.
    """
    if w.shape[1] < w.shape[0]:
        m = w_q.T @ w_q
        px = x @ (w_q.T @ w).T  # rows of P x
        return lambda xq: ((xq @ m) * xq).sum(-1, keepdim=True) - 2 * (xq * px).sum(-1, keepdim=True)
    reference = F.linear(x, w)
    return lambda xq: (F.linear(xq, w_q) - reference).square_()


def _subset_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """Whole images of ``x`` [B, ...] such that at most ``max_rows`` token rows are kept (at least one image)."""
    rows_per_image = max(x[0].numel() // x.shape[-1], 1)
    return x[: max(1, max_rows // rows_per_image)]


def _conv_rows(layer: QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [B, C*k*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _conv_op(layer: QuantConv2d):
    def op(inp, wq):
        if inp.dim() == 5:  # [k, B, C, H, W] candidates
            out = F.conv2d(inp.flatten(0, 1), wq, None, layer.stride)
            return out.reshape(*inp.shape[:2], *out.shape[1:])
        return F.conv2d(inp, wq, None, layer.stride)
    return op


def _weight_errors(w: torch.Tensor, g_qq: torch.Tensor, cross: torch.Tensor, bits: int, chunk_elements: int):
    """errors(scales [K, O], zeros [K, O]) -> [K, O]: each channel's output error up to a constant (module doc)."""
    def errors(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        k_total, out, inp = scale.shape[0], w.shape[0], w.shape[1]
        chunk = max(1, min(k_total, chunk_elements // max(out * inp, 1)))
        parts = []
        for first in range(0, k_total, chunk):
            s, z = scale[first:first + chunk, :, None], zero[first:first + chunk, :, None]
            wq = fake_quant_uniform(w.unsqueeze(0), s, z, bits)  # [k, O, C]
            parts.append(((wq @ g_qq) * wq).sum(-1) - 2 * (wq * cross).sum(-1))
        return torch.cat(parts)
    return errors


@torch.no_grad()
def _search_weight(start: WeightParams, weight: torch.Tensor, g_qq: torch.Tensor, cross: torch.Tensor,
                   settings: SearchSettings) -> WeightParams:
    """Per-channel range minimising the output error (module doc); ``cross`` = ``W G_qf^T`` [O, C]. Asymmetric
    grids descend over ``[r_lo min_o, r_hi max_o]``; symmetric ones (zero point ``2^(b-1)``) try every
    ``r max|w_o|``."""
    bits = start.bits
    w = weight.detach().float().reshape(weight.shape[0], -1)
    errors = _weight_errors(w, g_qq, cross, bits, settings.chunk_elements)
    start_scale = start.scale.detach().float().reshape(-1)
    start_zero = start.zero_point.detach().float().reshape(-1)
    if start.symmetric:  # int8-style: zero point 2^(b-1), scale r * max|w| / (2^(b-1) - 1)
        half = 2 ** (bits - 1)
        ratios = torch.tensor(settings.weight_ratios, device=w.device)
        scale = torch.clamp(ratios.reshape(-1, 1) * w.abs().amax(dim=1), min=1e-8) / (half - 1)  # [K, O]
        scale = torch.cat([start_scale.unsqueeze(0), scale])
        zero = torch.cat([start_zero.unsqueeze(0), torch.full_like(scale[1:], float(half))])
        index = errors(scale, zero).argmin(dim=0)
        best_scale, best_zero = scale.gather(0, index[None]).squeeze(0), zero.gather(0, index[None]).squeeze(0)
    else:
        base = (w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0))
        best_scale, best_zero = descend((start_scale, start_zero), base, bits, settings.weight_ratios, errors)
    view = (-1,) + (1,) * (weight.dim() - 1)
    return WeightParams(best_scale.reshape(view).to(weight.dtype), best_zero.reshape(view).to(weight.dtype), bits,
                        start.layout, start.block_size)


@torch.no_grad()
def search_linear(layer: QuantLayer, x: torch.Tensor, weights: dict[WeightKey, WeightParams],
                  acts: dict[ActKey, object], ref: tuple[WeightKey | None, ActKey | None],
                  settings: SearchSettings, grouped: bool, include_zero: bool, stats: OperandStats | None = None
                  ) -> tuple[dict[WeightKey, WeightParams], dict[ActKey, object]]:
    """Searched copies of a linear layer's (or patch conv's) fast-fit ``weights`` and ``acts`` (module doc).

    x: the layer's float input over the captured images; stats: what the capture saw of it over all images (the
    candidates' base ranges). ref: the reference ``(weight key, act key)`` whose params quantize the partner operand.
    Returns new dicts (the inputs are not changed)."""
    if isinstance(layer, QuantConv2d) and (layer.groups != 1 or tuple(layer.padding) != (0, 0)
                                           or tuple(layer.dilation) != (1, 1)):
        return dict(weights), dict(acts)
    x = x.float()
    w_float = layer.weight.detach().float()
    ref_w, ref_a = ref
    w_partner = quantize_weight(layer.weight, weights[ref_w]).detach().float() if ref_w is not None else w_float
    x_act = _subset_rows(x, settings.act_tokens)
    is_linear = isinstance(layer, QuantLinear)
    op = (lambda inp, wq: F.linear(inp, wq)) if is_linear else _conv_op(layer)
    group = tuple(x.shape[1:-1]) + (1,) if grouped and is_linear and x.dim() >= 3 else ()
    new_acts = dict(acts)
    reference = op(x_act, w_float)
    error = _linear_error(w_partner, w_float, x_act) if is_linear else \
        _op_error(lambda inp: op(inp, w_partner), reference)
    for key, start in acts.items():
        if _searchable(start):
            new_acts[key] = _search_act(start, x_act, group, "position", error, reference.numel(), settings,
                                        include_zero, stats)
    new_weights = dict(weights)
    searchable = [k for k, p in weights.items() if p.block_size is None]
    if searchable:
        partner = new_acts.get(ref_a) if ref_a is not None else None
        xq = fake_quant(x, partner) if _searchable(partner) else x
        if isinstance(layer, QuantConv2d):
            rows, rows_q = _conv_rows(layer, x), _conv_rows(layer, xq)
        else:
            rows, rows_q = x.reshape(-1, x.shape[-1]), xq.reshape(-1, x.shape[-1])
        g_qq = rows_q.T @ rows_q
        cross = w_float.reshape(w_float.shape[0], -1) @ (rows_q.T @ rows).T  # [O, C]: row o is G_qf w_o
        for key in searchable:
            new_weights[key] = _search_weight(weights[key], layer.weight, g_qq, cross, settings)
    return new_weights, new_acts


def _head_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[1],) + (1,) * (x.dim() - 2) if x.dim() >= 4 else ()


@torch.no_grad()
def search_matmul(a: torch.Tensor, b: torch.Tensor, acts: list[dict[ActKey, object]], ref: ActKey | None,
                  settings: SearchSettings, grouped: bool, include_zero: bool,
                  stats: list[OperandStats] | None = None) -> list[dict[ActKey, object]]:
    """Searched copies of an attention matmul's operand params (module doc). ``acts[i]``: operand ``i``'s params by
    key; ``ref``: the reference input key (its params quantize the partner operand); ``stats[i]``: what the capture
    saw of operand ``i`` over all images."""
    a, b = a[: settings.matmul_images].float(), b[: settings.matmul_images].float()
    reference = a @ b
    new = [dict(acts[0]), dict(acts[1])]
    for operand, x in ((0, a), (1, b)):
        other = 1 - operand
        partner_params = new[other].get(ref) if ref is not None else None
        partner = fake_quant(b if other == 1 else a, partner_params) if partner_params is not None else \
            (b if other == 1 else a)
        op = (lambda inp, p=partner: inp @ p) if operand == 0 else (lambda inp, p=partner: p @ inp)
        group = _head_shape(x) if grouped else ()
        for key, start in acts[operand].items():
            if _searchable(start):
                new[operand][key] = _search_act(start, x, group, "head", _op_error(op, reference),
                                                reference.numel(), settings, include_zero,
                                                stats[operand] if stats is not None else None)
    return new
