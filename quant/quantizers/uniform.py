"""Asymmetric uniform fake quantization for activations.

Granularities: ``tensor`` (one scale and zero point), ``position`` (a static scale and zero point per token
position, shape ``x.shape[1:-1] + (1,)``), ``head`` (per attention head, shape ``[H, 1, 1]``) and ``token``
(dynamic: each token's own min/max at run time, nothing calibrated). ``position`` and ``head`` parameters come
from the output-aware range search (``quant.range_search``); their shape is stored in the bundle.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ActivationQuantizer, round_ste

__all__ = ["GRANULARITIES", "UniformQuantizer", "dynamic_block_quant", "fake_quant_uniform", "search_uniform_range"]

_LOW_QUANTILES = (0.0, 1e-3, 1e-2, 3e-2)
_HIGH_QUANTILES = (1.0, 1 - 1e-4, 1 - 1e-3, 1 - 3e-3, 1 - 1e-2, 1 - 3e-2)
#: The range search scores candidates on at most this many values (a fixed-seed subsample).
_SEARCH_VALUES = 16384
#: "use the quantizer's current setting" (``quantize_at``).
_CURRENT = object()


def fake_quant_uniform(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the grid ``(q - z) * s`` with ``q`` in ``[0, 2^bits - 1]``.

    ``scale``/``zero_point`` broadcast against ``x``. Rounding is straight-through, so gradients reach both
    ``x`` (inside the range) and ``scale`` (LSQ-style).
    """
    qmax = 2**bits - 1
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad):
        return torch.div(x, scale).round_().add_(zero_point).clamp_(0, qmax).sub_(zero_point).mul_(scale)
    q = torch.clamp(round_ste(x / scale) + zero_point, 0, qmax)
    return (q - zero_point) * scale


def dynamic_block_quant(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Dynamic symmetric int8 fake quantization per row and per block of ``block_size`` along the last dim.

    What onnxruntime's ``MatMulNBits`` with ``accuracy_level=4`` does to its float input: for each row (all
    leading dims) and block (the last block zero-padded), ``scale = amax / 127``, ``inv = 1 / scale`` (0 where
    ``scale == 0``), ``q = clamp(round(x * inv), -128, 127)`` (round half to even), result ``q * scale``; all in
    float32. Rounding is straight-through for gradients.
    """
    k = x.shape[-1]
    pad = -k % block_size
    blocks = torch.nn.functional.pad(x, (0, pad)) if pad else x
    blocks = blocks.reshape(*x.shape[:-1], -1, block_size)
    scale = blocks.detach().abs().amax(dim=-1, keepdim=True) / 127.0
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    q = torch.clamp(round_ste(blocks * inv), -128, 127)
    out = (q * scale).reshape(*x.shape[:-1], -1)
    return out[..., :k] if pad else out


def _scale_zero(low: torch.Tensor, high: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    span = torch.clamp(high - low, min=1e-8)
    scale = span / (2**bits - 1)
    zero = torch.round(-low / scale)
    return scale, zero


@torch.no_grad()
def search_uniform_range(sample: torch.Tensor, bits: int, minmax: bool = False,
                         include_zero: bool = False) -> tuple[float, float]:
    """Choose ``(low, high)`` clipping of a 1-D sample minimising the quantization MSE.

    Candidates are pairs of low/high quantiles of the sample; ``minmax=True`` returns the plain extremes.
    include_zero: every candidate range contains 0 (``low <= 0 <= high``, so the zero point is a code).
    """
    sample = sample.float()
    low_all, high_all = sample.min(), sample.max()
    if include_zero:
        low_all, high_all = low_all.clamp(max=0), high_all.clamp(min=0)
    if minmax or bits >= 16:
        return float(low_all), float(high_all)
    lows = torch.quantile(sample, torch.tensor(_LOW_QUANTILES, device=sample.device))
    highs = torch.quantile(sample, torch.tensor(_HIGH_QUANTILES, device=sample.device))
    if include_zero:
        lows, highs = lows.clamp(max=0), highs.clamp(min=0)
    if sample.numel() > _SEARCH_VALUES:
        generator = torch.Generator(device=sample.device).manual_seed(0)
        pick = torch.randperm(sample.numel(), generator=generator, device=sample.device)[:_SEARCH_VALUES]
        sample = sample[pick]
    best = (float("inf"), float(low_all), float(high_all))
    for low in lows:
        for high in highs:
            if high <= low:
                continue
            scale, zero = _scale_zero(low, high, bits)
            err = (fake_quant_uniform(sample, scale, zero, bits) - sample).pow(2).mean().item()
            if err < best[0]:
                best = (err, float(low), float(high))
    return best[1], best[2]


def _zero_in_range(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid ``(scale, zero)`` widened where needed so that its range contains 0 (unchanged where it does)."""
    qmax = 2**bits - 1
    if bits >= 16 or bool(((zero >= 0) & (zero <= qmax)).all()):
        return scale, zero
    low = torch.clamp(-zero * scale, max=0)
    high = torch.clamp((qmax - zero) * scale, min=0)
    new_scale, new_zero = _scale_zero(low, high, bits)
    inside = (zero >= 0) & (zero <= qmax)
    return torch.where(inside, scale, new_scale), torch.where(inside, zero, new_zero)


GRANULARITIES = ("tensor", "position", "head", "token")


class UniformQuantizer(ActivationQuantizer):
    """Asymmetric uniform activation quantizer.

    ``granularity="tensor"``: one learnable scale and a zero point, ranges from a calibration search
    (MSE over quantile clipping) or plain min/max (``minmax=True``).
    ``granularity="position"``/``"head"``: grouped scale and zero point (set by ``set_params``, e.g. by the
    output-aware range search); they broadcast against the trailing dims of the input. An input they cannot
    broadcast against (a flattened 1-D sample, as the sensitivity pass uses) is quantized with the union range
    of all groups.
    ``granularity="token"``: per-token scale and zero point computed on the fly from each token's min/max
    (last dimension is the channel dimension); no calibration needed.

    ``dynamic_block`` (None by default): when set, an active quantizer (at 8 bits) quantizes dynamically, int8
    symmetric per row and per block of that many elements along the last dim (:func:`dynamic_block_quant`,
    MatMulNBits ``accuracy_level=4``); the static parameters are kept untouched, so setting it back to None
    restores the calibrated range.
    """

    fit_params = ("scale", "zero_point")
    kind = "uniform"

    def __init__(self, bits: int = 8, granularity: str = "tensor", minmax: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__(bits, device=device)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self.minmax = minmax
        self.dynamic_block: int | None = None
        #: static ranges always contain 0, so the zero point is an integer in [0, 2^bits - 1] (what uint8
        #: QuantizeLinear needs); set for deployment targets.
        self.include_zero = False
        self.scale = nn.Parameter(torch.tensor(1.0, device=device), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(0.0, device=device))

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor, granularity: str | None = None) -> None:
        """Replace scale and zero point (same shape: ``()`` per tensor, or a group shape such as ``[N, 1]``).

        granularity: name of the grouping (``position``/``head``); default: ``tensor`` for one element, else
        unchanged.
        """
        if tuple(scale.shape) != tuple(zero_point.shape):
            raise ValueError(f"scale shape {tuple(scale.shape)} differs from zero point shape "
                             f"{tuple(zero_point.shape)}")
        if granularity is not None and granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if self.include_zero:
            scale, zero_point = _zero_in_range(scale.detach(), zero_point.detach(), self.bits)
        requires_grad = bool(self.scale.requires_grad)
        self.scale = nn.Parameter(scale.detach().to(self.scale.dtype).clone(), requires_grad=requires_grad)
        self.zero_point = zero_point.detach().to(self.zero_point.dtype).clone()
        if granularity is not None:
            self.granularity = granularity
        elif scale.numel() == 1 and self.granularity != "token":
            self.granularity = "tensor"

    def remember_fit(self) -> None:
        """Keep the current parameters as the fitted state of the current bit-width (``set_bits`` restores it)."""
        self._fitted[self.bits] = {name: getattr(self, name).detach().clone() for name in self.fit_params}
        self._fitted[self.bits]["granularity"] = self.granularity

    def _fit_cached(self, bits: int) -> None:
        cached = self._fitted.get(bits)
        if cached is None:
            self.fit(self.calibration_sample())
            self.remember_fit()
            return
        self.set_params(cached["scale"], cached["zero_point"], cached.get("granularity"))

    def set_range(self, low: float, high: float) -> None:
        """Set a per-tensor grid so that ``[low, high]`` is covered at the current bit-width."""
        device = self.scale.device
        scale, zero = _scale_zero(torch.tensor(low, device=device), torch.tensor(high, device=device), self.bits)
        self.set_params(scale, zero, "tensor")

    def fit(self, sample: torch.Tensor) -> None:
        if self.granularity == "token":
            return
        low, high = search_uniform_range(sample, self.bits, minmax=self.minmax, include_zero=self.include_zero)
        self.set_range(low, high)

    def _broadcasts(self, x: torch.Tensor) -> bool:
        shape = tuple(self.scale.shape)
        return len(shape) < x.dim() and all(s in (1, t) for s, t in zip(shape, x.shape[x.dim() - len(shape):]))

    def quantize_at(self, x: torch.Tensor, bits: int, *, dynamic_block=_CURRENT) -> torch.Tensor:
        """Fake-quantize ``x`` as this quantizer would at ``bits`` (and ``dynamic_block``: None = static, a block
        size = dynamic; default: the current setting), leaving its state unchanged."""
        saved = self.dynamic_block
        if dynamic_block is not _CURRENT:
            self.dynamic_block = dynamic_block
        try:
            return super().quantize_at(x, bits)
        finally:
            self.dynamic_block = saved

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_block is not None:
            if self.bits != 8:
                raise ValueError(f"dynamic block quantization is int8: set bits to 8, not {self.bits}")
            return dynamic_block_quant(x, self.dynamic_block)
        if self.granularity == "token":
            low = x.detach().amin(dim=-1, keepdim=True)
            high = x.detach().amax(dim=-1, keepdim=True)
            scale, zero = _scale_zero(low, high, self.bits)
            return fake_quant_uniform(x, scale, zero, self.bits)
        if self.scale.numel() > 1 and not self._broadcasts(x):
            low = ((0 - self.zero_point) * self.scale).amin()
            high = ((2**self.bits - 1 - self.zero_point) * self.scale).amax()
            scale, zero = _scale_zero(low, high, self.bits)
            return fake_quant_uniform(x, scale, zero, self.bits)
        return fake_quant_uniform(x, self.scale, self.zero_point, self.bits)

    def describe(self) -> dict:
        info = super().describe()
        info["granularity"] = self.granularity
        if self.granularity == "tensor":
            info.update(scale=float(self.scale), zero_point=float(self.zero_point))
        elif self.granularity in ("position", "head"):
            info["shape"] = list(self.scale.shape)
        if self.dynamic_block is not None:
            info["dynamic_block"] = int(self.dynamic_block)
        return info
