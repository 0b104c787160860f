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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .modules import QuantLinear
from .quantizers import fake_quant, fake_quant_weight, fit_uniform, fit_weight
from .target import form_for_bits

__all__ = ["KAPPA_GRID", "Fold", "ReparamReport", "apply_fold_", "find_layernorm_pairs", "plan_folds",
           "reparameterize_"]

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


@dataclass(frozen=True, eq=False)
class Fold:
    """One reparameterization as a value: ``report`` plus the per-channel ``low`` and ``ratio`` [C] and the ``shift``
    (0-dim) that :func:`apply_fold_` folds into the LayerNorm and the linear (module doc)."""

    report: ReparamReport
    low: torch.Tensor
    ratio: torch.Tensor
    shift: torch.Tensor


@torch.no_grad()
def apply_fold_(model: nn.Module, fold: Fold) -> None:
    """Fold ``fold`` into ``model``'s LayerNorm and linear (the float function is unchanged)."""
    norm: nn.LayerNorm = model.get_submodule(fold.report.norm)
    linear = model.get_submodule(fold.report.linear)
    low, ratio, shift = (t.to(norm.weight.device) for t in (fold.low, fold.ratio, fold.shift))
    weight = linear.weight.detach().float()
    bias = linear.bias.detach().float() if linear.bias is not None else None
    norm.weight.copy_(norm.weight / ratio)
    norm.bias.copy_((norm.bias - low) / ratio + shift)
    new_bias = (bias if bias is not None else weight.new_zeros(weight.shape[0])) + weight @ (low - shift * ratio)
    linear.weight.copy_(weight * ratio)
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
    else:
        linear.bias.copy_(new_bias)


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

    def __init__(self, seed: int = 0) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.count = 0
        self.seed = seed
        self.generator: torch.Generator | None = None

    def __call__(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        x = output.detach().reshape(-1, output.shape[-1]).float()
        low, high = x.amin(dim=0), x.amax(dim=0)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        if self.count < _MAX_TOKENS:
            if self.generator is None:  # the token sample is drawn where the tensors live, seeded
                self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
            take = min(x.shape[0], max(_MAX_TOKENS // 8, 1))
            idx = torch.randperm(x.shape[0], device=x.device, generator=self.generator)[:take]
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


def _layout(linear: nn.Module, wbits: int, abits: int) -> tuple[str, int | None]:
    """Weight layout ``(layout, block_size)`` of a linear at its reference pair (its target form's on a runtime)."""
    if not isinstance(linear, QuantLinear) or linear.target == "sim":
        return "channel", None
    form = form_for_bits(linear.target, linear.component, wbits, abits)
    if form.weights == "block":
        return "block", linear.block_size
    return ("symmetric" if form.weights == "channel" else "channel"), None


@torch.no_grad()
def _folded_output_error(x, low, ratio, shift, weight, bias, wbits, abits, *, layout="channel",
                         block_size=None) -> float:
    reference = x @ weight.T + (bias if bias is not None else 0)
    folded_x = (x - low) / ratio + shift
    folded_w = weight * ratio
    folded_b = (bias if bias is not None else 0) + weight @ (low - shift * ratio)
    act = fit_uniform(_sample(folded_x), abits)
    w_params = fit_weight(folded_w, wbits, layout=layout, block_size=block_size)
    out = fake_quant(folded_x, act) @ fake_quant_weight(folded_w, w_params).T + folded_b
    return (out - reference).pow(2).mean().item()


def _sample(x: torch.Tensor, size: int = 1 << 13) -> torch.Tensor:
    """The values of ``x`` (at most ``size`` of them, a fixed-seed subsample) plus its exact min and max."""
    flat = x.reshape(-1).float()
    if flat.numel() > size:
        generator = torch.Generator(device=flat.device).manual_seed(0)
        flat = flat[torch.randint(0, flat.numel(), (size,), device=flat.device, generator=generator)]
    return torch.cat([flat, torch.stack([x.min(), x.max()]).float()])


@torch.no_grad()
def reparameterize_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    mode: str = "mad",
    kappa_grid: tuple[float, ...] = KAPPA_GRID,
    reference: Mapping[str, tuple[int, int]] | None = None,
) -> list[ReparamReport]:
    """Fold per-channel ranges of every post-LayerNorm activation into the LayerNorm and the next linear
    (:func:`plan_folds`, then :func:`apply_fold_` for each); returns one report per pair."""
    folds = plan_folds(model, batches, mode, kappa_grid, reference)
    for fold in folds:
        apply_fold_(model, fold)
    return [fold.report for fold in folds]


@torch.no_grad()
def plan_folds(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    mode: str = "mad",
    kappa_grid: tuple[float, ...] = KAPPA_GRID,
    reference: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
) -> list[Fold]:
    """The folds of every post-LayerNorm pair of ``model`` (which is not changed).

    model: a wrapped model running with float params (or a plain timm model; the float function must hold).
    batches: calibration images [B,3,H,W] (normalised). mode: ``mean`` (RepQ-ViT) or ``mad`` (MOSF).
    reference: ``{linear name: (wbits, abits)}`` the kappa candidates are scored at (default (8, 8); a float side
    is scored at 8 bits), in the weight layout of the linear's target form. seed: the token sample that scores the
    kappa candidates (deterministic for a seed, whatever ran before).
    """
    if mode not in ("mean", "mad"):
        raise ValueError(f"reparameterization mode must be 'mean' or 'mad', got {mode!r}")
    pairs = find_layernorm_pairs(model)
    collectors = {norm: _Collector(seed) for norm, _ in pairs}
    handles = [model.get_submodule(norm).register_forward_hook(collectors[norm]) for norm, _ in pairs]
    try:
        for images in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()

    folds = []
    for norm_name, linear_name in pairs:
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
            wbits, abits = (reference or {}).get(linear_name, (8, 8))
            layout, block_size = _layout(linear, wbits, abits)
            wbits, abits = min(wbits, 8), min(abits, 8)  # a float side is scored at 8 bits
            for kappa in kappa_grid:
                err = _folded_output_error(tokens, low, _ratios(width, mode, kappa), shift, weight, bias,
                                           wbits, abits, layout=layout, block_size=block_size)
                if best_err is None or err < best_err:
                    chosen_kappa, best_err = kappa, err
        ratio = _ratios(width, mode, chosen_kappa)
        report = ReparamReport(norm_name, linear_name, mode, chosen_kappa, int((ratio != 1).sum()), best_err)
        folds.append(Fold(report, low.clone(), ratio.clone(), shift.clone()))
    return folds
