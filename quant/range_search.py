"""Output-aware range search: choose weight and activation ranges by the error they cause in the layer's output.

``search_ranges_(model, images)`` refines a calibrated wrapped model (``quant.calibrate.calibrate_`` ran first,
which gives every quantizer its fast weight-MSE / sample-MSE start). For every quantization layer it captures
the float inputs of a calibration subset and then alternates, for ``rounds`` rounds:

1. **activations**: every candidate range of the layer's uniform input quantizer(s) is scored by the mean squared
   error of the layer's output, ``|op(fq_k(x), Wq) - op(x, W)|^2``, with the other operand quantized as
   currently chosen. All candidates of a layer are one batched tensor op: the inputs are fake-quantized for a
   chunk of candidates at once (``[K, *x.shape]``) and pushed through the layer's op in one call.
2. **weights** (per output channel): with the input quantized, the output error of output channel ``o`` is the
   quadratic form ``w_o^T G_ff w_o - 2 wq^T G_qf w_o + wq^T G_qq wq`` of the input Gram matrices
   (``G_qq = Xq^T Xq``, ``G_qf = Xq^T X``, over every captured token), so all candidate ranges of all channels
   are scored as one batched matmul ``[K, O, C] @ [C, C]`` whose cost does not grow with the number of tokens.

The error is the layer's own output (not the block's): layers are independent, so the search needs one float
pass and is exact per group (see below). The current (fast) range is always a candidate, so the chosen range
never has a larger output error on the search data than the starting one.

Granularities (each group picks its own range; groups are separable in the output error, so picking per group
is the exact joint optimum for the fixed other operand):

- ``tensor``: one scale and zero point (2-D inputs, e.g. the head; the patch embedding's image input);
- ``position`` (per token): a scale and zero point per token position, shape ``x.shape[1:-1] + (1,)``
  (``[N, 1]`` for ViT ``[B, N, C]`` inputs, ``[H, W, 1]`` for Swin's patch merging) for the inputs of
  linear layers; the research code's per-token scales, static so they are stored and exported;
- ``head``: a scale and zero point per attention head, shape ``[H, 1, 1]``, for q, k and v (matmul inputs).

Candidates: per group ``low = r_lo * min_g``, ``high = r_hi * max_g`` over a ratio grid (``ACT_RATIOS`` x
``ACT_RATIOS`` for activations, ``WEIGHT_RATIOS`` x ``WEIGHT_RATIOS`` per weight channel). Post-softmax
quantizers (log2, TanQ) keep their own fit (TanQ already scores its output ``maps @ v``).

Deployment targets (layers wrapped with ``target != "sim"``): activation ranges stay per tensor (no runtime
executes per-position or per-head scales), symmetric per-channel weights (``int8``) search ``r * max|w|`` with
the zero point fixed at ``2^(b-1)``, block-wise weights (``w8``/``w4``/``w4a8``) keep their per-block weight-MSE
fit (the output error does not separate per block), and dynamic input quantizers (``w4a8``) have no range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLayer, QuantLinear, QuantMatMul
from .quantizers import UniformQuantizer, WeightQuantizer, fake_quant_uniform
from .quantizers.uniform import _zero_in_range
from .wrap import quant_layers

__all__ = ["ACT_RATIOS", "RANGE_SEARCHES", "WEIGHT_RATIOS", "SearchSettings", "search_ranges_"]

#: ``range_search`` values: ``minmax`` = the fast calibration only, ``output`` = this module on top of it.
RANGE_SEARCHES = ("minmax", "output")
ACT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.28, 0.22)
WEIGHT_RATIOS = tuple(1.0 - 0.05 * i for i in range(14))  # 1.0 .. 0.35


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the output-aware search.

    images: calibration images whose layer inputs are captured (fewer if ``capture_bytes`` would be exceeded).
    rounds: activation/weight alternations. act_tokens: at most this many rows (whole images) score the
    activation candidates of a linear layer. matmul_images: images scoring the q/k/v candidates.
    chunk_elements: bound on the elements of one batched candidate tensor (memory per op).
    """

    images: int = 128
    rounds: int = 1
    act_tokens: int = 2048
    matmul_images: int = 8
    chunk_elements: int = 1 << 24
    capture_bytes: int = 1 << 30
    act_ratios: tuple[float, ...] = ACT_RATIOS
    weight_ratios: tuple[float, ...] = WEIGHT_RATIOS


# ---- capture -----------------------------------------------------------------------------------------------
class _Capture:
    """Forward pre-hooks keeping each layer's float inputs (detached, concatenated over batches)."""

    def __init__(self, layers: dict[str, QuantLayer]) -> None:
        self.inputs: dict[str, list[list[torch.Tensor]]] = {name: [] for name in layers}
        self.handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def hook(_module, args):
            self.inputs[name].append([a.detach() for a in args if isinstance(a, torch.Tensor)])
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def tensors(self, name: str) -> list[torch.Tensor]:
        parts = self.inputs[name]
        if not parts:
            return []
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def _set_enabled(layers: dict[str, QuantLayer], on: bool) -> dict[int, tuple[bool, ...]]:
    saved = {}
    for layer in layers.values():
        qs = list(layer.activation_quantizers()) + ([layer.weight_quantizer] if layer.has_weight else [])
        saved[id(layer)] = tuple(q.enabled for q in qs)
        for q in qs:
            q.enabled = on and q.enabled
    return saved


def _restore_enabled(layers: dict[str, QuantLayer], saved: dict[int, tuple[bool, ...]]) -> None:
    for layer in layers.values():
        qs = list(layer.activation_quantizers()) + ([layer.weight_quantizer] if layer.has_weight else [])
        for q, on in zip(qs, saved[id(layer)], strict=True):
            q.enabled = on


@torch.no_grad()
def _capture(model: nn.Module, layers: dict[str, QuantLayer], images: torch.Tensor, batch_size: int) -> _Capture:
    device = next(model.parameters()).device
    saved = _set_enabled(layers, False)
    capture = _Capture(layers)
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size].to(device))
    finally:
        capture.remove()
        _restore_enabled(layers, saved)
    return capture


def _per_image_bytes(model: nn.Module, layers: dict[str, QuantLayer], image: torch.Tensor) -> int:
    capture = _capture(model, layers, image[:1], 1)
    return sum(t.numel() * t.element_size() for name in layers for t in capture.tensors(name))


# ---- candidate ranges ----------------------------------------------------------------------------------------
def _group_dims(x: torch.Tensor, group_shape: tuple[int, ...]) -> list[int]:
    """Dims of ``x`` reduced for a group statistic: the batch dim and every dim where the group shape is 1."""
    lead = x.dim() - len(group_shape)
    return list(range(lead)) + [lead + i for i, g in enumerate(group_shape) if g == 1]


def _scale_zero(low: torch.Tensor, high: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.clamp(high - low, min=1e-8) / (2**bits - 1)
    return scale, torch.round(-low / scale)


def _act_candidates(x: torch.Tensor, group_shape: tuple[int, ...], bits: int,
                    current: tuple[torch.Tensor, torch.Tensor],
                    act_ratios: tuple[float, ...] = ACT_RATIOS) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate (scale, zero) of shape [K, *group_shape]; candidate 0 is the current range."""
    dims = _group_dims(x, group_shape)
    low = x.amin(dim=dims).reshape(group_shape).float()
    high = x.amax(dim=dims).reshape(group_shape).float()
    ratios = torch.tensor(act_ratios, device=x.device)
    r_lo, r_hi = torch.meshgrid(ratios, ratios, indexing="ij")
    view = (-1,) + (1,) * len(group_shape)
    lows = r_lo.reshape(view) * low
    highs = r_hi.reshape(view) * high
    scale, zero = _scale_zero(torch.minimum(lows, highs - 1e-6), highs, bits)
    cur_scale = current[0].detach().float().expand(group_shape).unsqueeze(0)
    cur_zero = current[1].detach().float().expand(group_shape).unsqueeze(0)
    return torch.cat([cur_scale, scale]), torch.cat([cur_zero, zero])


def _batched_argmin(
    x: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
    error: Callable[[torch.Tensor], torch.Tensor], chunk_elements: int, out_numel: int,
) -> torch.Tensor:
    """Index [*group] of the candidate with the least output error per group.

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
    return torch.cat(errors).reshape(k_total, *group_shape).argmin(dim=0)


def _pick(candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return candidates.gather(0, index.unsqueeze(0)).squeeze(0)


def _search_activation(quantizer: UniformQuantizer, x: torch.Tensor, group_shape: tuple[int, ...],
                       error: Callable[[torch.Tensor], torch.Tensor], out_numel: int,
                       settings: SearchSettings) -> None:
    bits = quantizer.bits
    scales, zeros = _act_candidates(x, group_shape, bits, (quantizer.scale, quantizer.zero_point),
                                    settings.act_ratios)
    if quantizer.include_zero:  # deployment targets: the zero point must be a code (uint8 QuantizeLinear)
        scales, zeros = _zero_in_range(scales, zeros, bits)
    index = _batched_argmin(x.float(), scales, zeros, bits, error, settings.chunk_elements, out_numel)
    quantizer.set_params(_pick(scales, index), _pick(zeros, index))


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


def _position_shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[1:-1]) + (1,)


# ---- weights -------------------------------------------------------------------------------------------------
@torch.no_grad()
def _search_weight(quantizer: WeightQuantizer, weight: torch.Tensor, x: torch.Tensor, xq: torch.Tensor,
                   settings: SearchSettings) -> None:
    """Per-channel range minimising the output error ``|X W^T - Xq Wq^T|^2`` (Gram form, batched candidates).

    weight: [O, C] (a conv weight flattened to [O, C*k*k]); x, xq: [T, C] float / quantized input rows.
    """
    bits = quantizer.bits
    qmax = 2**bits - 1
    w = weight.detach().float().reshape(weight.shape[0], -1)
    x, xq = x.float(), xq.float()
    g_qq = xq.T @ xq
    cross = w @ (xq.T @ x).T  # [O, C]: row o is G_qf w_o
    ratios = torch.tensor(settings.weight_ratios, device=w.device)
    if quantizer.symmetric:  # int8-style: zero point 2^(b-1), scale r * max|w| / (2^(b-1) - 1)
        half = 2 ** (bits - 1)
        scale = torch.clamp(ratios.reshape(-1, 1) * w.abs().amax(dim=1), min=1e-8) / (half - 1)  # [K, O]
        zero = torch.full_like(scale, float(half))
    else:
        low, high = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        r_lo, r_hi = torch.meshgrid(ratios, ratios, indexing="ij")
        lows = r_lo.reshape(-1, 1) * low  # [K, O]
        highs = r_hi.reshape(-1, 1) * high
        scale = torch.clamp(highs - lows, min=1e-8) / qmax
        zero = torch.round(-lows / scale)
    scale = torch.cat([quantizer.scale.detach().float().reshape(1, -1), scale])
    zero = torch.cat([quantizer.zero_point.detach().float().reshape(1, -1), zero])
    k_total, out, inp = scale.shape[0], w.shape[0], w.shape[1]
    chunk = max(1, min(k_total, settings.chunk_elements // max(out * inp, 1)))
    errors = []
    for start in range(0, k_total, chunk):
        s, z = scale[start:start + chunk, :, None], zero[start:start + chunk, :, None]
        wq = fake_quant_uniform(w.unsqueeze(0), s, z, bits)  # [k, O, C]
        quad = ((wq @ g_qq) * wq).sum(-1)
        errors.append(quad - 2 * (wq * cross).sum(-1))
    index = torch.cat(errors).argmin(dim=0)  # [O]
    view = (-1,) + (1,) * (weight.dim() - 1)
    best_scale = scale.gather(0, index[None]).squeeze(0).reshape(view).to(weight.dtype)
    best_zero = zero.gather(0, index[None]).squeeze(0).reshape(view).to(weight.dtype)
    quantizer.set_params(best_scale, best_zero)


# ---- per layer -----------------------------------------------------------------------------------------------
def _subset_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """Whole images of ``x`` [B, ...] such that at most ``max_rows`` token rows are kept (at least one image)."""
    rows_per_image = max(x[0].numel() // x.shape[-1], 1)
    return x[: max(1, max_rows // rows_per_image)]


def _linear_like(layer: QuantLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable, bool] | None:
    """(input rows source, weight [O, C'], op on inputs, per-position allowed) of a linear or patch conv."""
    if isinstance(layer, QuantLinear):
        return x, layer.weight, lambda inp, wq: F.linear(inp, wq), x.dim() >= 3
    if isinstance(layer, QuantConv2d):
        if layer.groups != 1 or tuple(layer.padding) != (0, 0) or tuple(layer.dilation) != (1, 1):
            return None

        def op(inp, wq):
            if inp.dim() == 5:  # [k, B, C, H, W] candidates
                out = F.conv2d(inp.flatten(0, 1), wq, None, layer.stride)
                return out.reshape(*inp.shape[:2], *out.shape[1:])
            return F.conv2d(inp, wq, None, layer.stride)
        return x, layer.weight, op, False
    return None


def _conv_rows(layer: QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [B, C*k*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def _search_linear(layer: QuantLayer, x: torch.Tensor, settings: SearchSettings, per_position: bool) -> None:
    spec = _linear_like(layer, x)
    if spec is None:
        return
    x, weight, op, position_ok = spec
    x = x.float()
    aq, wq = layer.input_quantizer, layer.weight_quantizer
    act_on = aq.active and _searchable(aq)
    w_on = wq.active
    if not act_on and not w_on:
        return
    w_search = w_on and wq.block_size is None  # block-wise weights keep their per-block MSE fit
    w_float = weight.detach().float()
    per_position = per_position and layer.target == "sim"
    group = _position_shape(x) if (per_position and position_ok and act_on) else ()
    if group and group != aq.scale.shape and aq.scale.numel() == 1:
        aq.set_params(aq.scale.detach().expand(group).clone(), aq.zero_point.detach().expand(group).clone(),
                      "position")
    x_act = _subset_rows(x, settings.act_tokens)
    reference = op(x_act, w_float)
    for _ in range(settings.rounds):
        if act_on:
            w_now = wq(weight).detach().float() if w_on else w_float
            if isinstance(layer, QuantLinear):
                error = _linear_error(w_now, w_float, x_act)
            else:
                error = _op_error(lambda inp, w_now=w_now: op(inp, w_now), reference)
            _search_activation(aq, x_act, tuple(aq.scale.shape) if group else (), error, reference.numel(),
                               settings)
        if w_search:
            xq = aq(x) if act_on else x
            if isinstance(layer, QuantConv2d):
                rows, rows_q = _conv_rows(layer, x), _conv_rows(layer, xq)
            else:
                rows, rows_q = x.reshape(-1, x.shape[-1]), xq.reshape(-1, x.shape[-1])
            _search_weight(wq, weight, rows, rows_q, settings)


def _searchable(quantizer) -> bool:
    """A static uniform quantizer (not per token, not dynamic): its range is searched."""
    return (isinstance(quantizer, UniformQuantizer) and quantizer.granularity != "token"
            and quantizer.dynamic_block is None)


def _head_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[1],) + (1,) * (x.dim() - 2) if x.dim() >= 4 else ()


@torch.no_grad()
def _search_matmul(layer: QuantMatMul, a: torch.Tensor, b: torch.Tensor, settings: SearchSettings,
                   per_head: bool) -> None:
    a, b = a[: settings.matmul_images].float(), b[: settings.matmul_images].float()
    qa, qb = layer.quantizer_a, layer.quantizer_b
    searchable = [q.active and _searchable(q) for q in (qa, qb)]
    if not any(searchable):
        return
    per_head = per_head and layer.target == "sim"
    reference = a @ b
    for q, x, on in ((qa, a, searchable[0]), (qb, b, searchable[1])):
        group = _head_shape(x) if per_head else ()
        if on and group and q.scale.numel() == 1:
            q.set_params(q.scale.detach().expand(group).clone(), q.zero_point.detach().expand(group).clone(),
                         "head")
    for _ in range(settings.rounds):
        if searchable[0]:
            b_now = qb(b) if qb.active else b
            _search_activation(qa, a, tuple(qa.scale.shape) if qa.scale.numel() > 1 else (),
                               _op_error(lambda inp, b_now=b_now: inp @ b_now, reference), reference.numel(),
                               settings)
        if searchable[1]:
            a_now = qa(a) if qa.active else a
            _search_activation(qb, b, tuple(qb.scale.shape) if qb.scale.numel() > 1 else (),
                               _op_error(lambda inp, a_now=a_now: a_now @ inp, reference), reference.numel(),
                               settings)


@torch.no_grad()
def search_ranges_(
    model: nn.Module,
    images: torch.Tensor,
    *,
    settings: SearchSettings | None = None,
    batch_size: int = 64,
    per_position: bool = True,
    per_head: bool = True,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Refine the ranges of a calibrated wrapped model in place by the output-aware search (module doc).

    images: float calibration images [N,3,H,W] (normalised); the first ``settings.images`` are used.
    per_position / per_head: allow per-token-position scales for linear inputs and per-head scales for q, k, v.
    The search runs at every quantizer's current bit-width and stores its result as the fitted state for that
    bit-width (``set_bits`` back to it restores the searched ranges).
    """
    settings = settings or SearchSettings()
    layers = quant_layers(model)
    subset = images[: settings.images]
    per_image = max(_per_image_bytes(model, layers, subset), 1)
    subset = subset[: max(4, min(len(subset), settings.capture_bytes // per_image))]
    capture = _capture(model, layers, subset, batch_size)
    names = list(layers)
    for index, name in enumerate(names):
        layer = layers[name]
        inputs = capture.tensors(name)
        capture.inputs[name] = []
        if not inputs:
            continue
        if isinstance(layer, QuantMatMul):
            _search_matmul(layer, inputs[0], inputs[1], settings, per_head)
        elif layer.has_weight:
            _search_linear(layer, inputs[0], settings, per_position)
        if progress is not None:
            progress((index + 1) / len(names))
    for layer in layers.values():
        for quantizer in layer.activation_quantizers():
            if isinstance(quantizer, UniformQuantizer) and quantizer.active:
                quantizer.remember_fit()
        if layer.has_weight and layer.weight_quantizer.active:
            layer.weight_quantizer.remember_fit()
