"""Post-LayerNorm reparameterization (RepQ-ViT) with mean or MAD-guided (DopQ-ViT MOSF) layer-wise range.

A LayerNorm feeding a linear layer (``norm1 -> attn.qkv``, ``norm2 -> mlp.fc1``, ``norm -> reduction``) has
strong inter-channel variation. With calibrated per-channel ranges ``[lo_c, hi_c]`` (width ``w_c``) we fold a
per-channel affine map into the LayerNorm and the next linear so that the linear's input can be quantized per
tensor:

    X' = (X - lo_c) / r_c + m           (LayerNorm: gamma' = gamma / r, beta' = (beta - lo) / r + m)
    W' = W * r (input columns),  b' = b + W @ (lo - m * r)

so that ``W' X' + b' == W X + b`` exactly in float. The choice of ``r``:

- ``mean`` (RepQ-ViT): ``r_c = w_c / mean(w)``; every channel gets the same width, so per-tensor quantization
  of ``X'`` equals per-channel quantization of ``X``, at the price of a wide column spread in ``W'``.
- ``mad`` (DopQ-ViT MOSF): a robust target width ``t = median(w) + kappa * MAD(w)`` and ``r_c = max(w_c / t, 1)``:
  only channels wider than ``t`` (outliers by the MAD rule) are shrunk to ``t``. ``kappa`` is chosen from a
  grid to minimise the error of the folded, quantized layer's output on calibration tokens, so the trade-off
  between activation and weight quantization error is measured, not assumed; ``kappa = inf`` (rescale nothing)
  is a candidate, so the fold never scores worse than leaving the layer alone. (With full equalization the
  layer-wise scale is a pure global rescaling that per-channel weight quantization ignores; the threshold form
  is what makes the MAD-guided choice matter. This is our documented reading of MOSF.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .modules import QuantLinear
from .quantizers import UniformQuantizer, WeightQuantizer

__all__ = ["KAPPA_GRID", "ReparamReport", "find_layernorm_pairs", "reparameterize_"]

KAPPA_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, float("inf"))
_MAX_TOKENS = 1024


@dataclass(frozen=True)
class ReparamReport:
    """What was folded: LayerNorm name, linear name, mode, chosen kappa (mad) and number of rescaled channels."""

    norm: str
    linear: str
    mode: str
    kappa: float | None
    rescaled_channels: int
    output_mse: float | None


def find_layernorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layernorm name, linear name)`` pairs where the LayerNorm output feeds only that linear layer."""
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        candidates = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"), ("norm", "reduction"))
        for norm_attr, linear_path in candidates:
            norm = getattr(module, norm_attr, None)
            try:
                linear = module.get_submodule(linear_path)
            except AttributeError:
                continue
            if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and isinstance(linear, (nn.Linear, QuantLinear)):
                pairs.append((prefix + norm_attr, prefix + linear_path))
    return pairs


class _Collector:
    """Forward hook gathering per-channel min/max and a sample of token rows of a LayerNorm output."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def __call__(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        x = output.detach().reshape(-1, output.shape[-1]).float()
        low, high = x.amin(dim=0), x.amax(dim=0)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        if self.count < _MAX_TOKENS:
            take = min(x.shape[0], max(_MAX_TOKENS // 8, 1))
            idx = torch.randperm(x.shape[0], device=x.device)[:take]
            self.rows.append(x[idx])
            self.count += take


def _ratios(width: torch.Tensor, mode: str, kappa: float | None) -> torch.Tensor:
    if mode == "mean":
        return width / width.mean()
    if kappa == float("inf"):  # no channel rescaled (only the shift is folded)
        return torch.ones_like(width)
    median = width.median()
    mad = (width - median).abs().median()
    target = median + kappa * mad
    return torch.clamp(width / torch.clamp(target, min=1e-8), min=1.0)


@torch.no_grad()
def _folded_output_error(x, low, ratio, shift, weight, bias, wbits, abits, *, block_size=None,
                         symmetric=False) -> float:
    reference = x @ weight.T + (bias if bias is not None else 0)
    folded_x = (x - low) / ratio + shift
    folded_w = weight * ratio
    folded_b = (bias if bias is not None else 0) + weight @ (low - shift * ratio)
    act_q = UniformQuantizer(abits)
    act_q.observe(folded_x)
    act_q.calibrated = True
    act_q.fit(act_q.calibration_sample())
    w_q = WeightQuantizer(wbits, block_size=block_size, symmetric=symmetric)  # the layer's weight layout
    w_q.calibrate(folded_w)
    out = act_q.quantize(folded_x) @ w_q(folded_w).T + folded_b
    return (out - reference).pow(2).mean().item()


@torch.no_grad()
def reparameterize_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    mode: str = "mad",
    kappa_grid: tuple[float, ...] = KAPPA_GRID,
) -> list[ReparamReport]:
    """Fold per-channel ranges of every post-LayerNorm activation into the LayerNorm and the next linear.

    model: a wrapped model with quantization disabled or observing (the float function must hold).
    batches: calibration images [B,3,H,W] (normalised). mode: ``mean`` (RepQ-ViT) or ``mad`` (MOSF).
    The layer's current wbits/abits are used to score the kappa candidates. Returns one report per pair.
    """
    if mode not in ("mean", "mad"):
        raise ValueError(f"reparameterization mode must be 'mean' or 'mad', got {mode!r}")
    pairs = find_layernorm_pairs(model)
    collectors = {norm: _Collector() for norm, _ in pairs}
    handles = [model.get_submodule(norm).register_forward_hook(collectors[norm]) for norm, _ in pairs]
    try:
        for images in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()

    reports = []
    for norm_name, linear_name in pairs:
        norm: nn.LayerNorm = model.get_submodule(norm_name)
        linear = model.get_submodule(linear_name)
        stats = collectors[norm_name]
        if stats.low is None:
            continue
        low, high = stats.low, stats.high
        width = torch.clamp(high - low, min=1e-6)
        weight = linear.weight.detach().float()
        bias = linear.bias.detach().float() if linear.bias is not None else None
        shift = low.median()
        chosen_kappa, best_err = None, None
        if mode == "mad":
            tokens = torch.cat(stats.rows)[:_MAX_TOKENS]
            wbits = linear.wbits if isinstance(linear, QuantLinear) else 8
            abits = linear.abits if isinstance(linear, QuantLinear) else 8
            layout = {}
            if isinstance(linear, QuantLinear):
                layout = {"block_size": linear.weight_quantizer.block_size,
                          "symmetric": linear.weight_quantizer.symmetric}
            for kappa in kappa_grid:
                err = _folded_output_error(tokens, low, _ratios(width, mode, kappa), shift, weight, bias,
                                           min(wbits, 8), min(abits, 8), **layout)
                if best_err is None or err < best_err:
                    chosen_kappa, best_err = kappa, err
        ratio = _ratios(width, mode, chosen_kappa)
        norm.weight.copy_(norm.weight / ratio)
        norm.bias.copy_((norm.bias - low) / ratio + shift)
        new_bias = (bias if bias is not None else weight.new_zeros(weight.shape[0])) + weight @ (low - shift * ratio)
        linear.weight.copy_(weight * ratio)
        if linear.bias is None:
            linear.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
        else:
            linear.bias.copy_(new_bias)
        reports.append(ReparamReport(norm_name, linear_name, mode, chosen_kappa, int((ratio != 1).sum()), best_err))
    return reports
