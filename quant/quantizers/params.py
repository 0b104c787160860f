"""Quantization parameters as values: frozen, typed records that say exactly how a tensor is quantized.

Every quantized tensor of a model is described by one of these records and nothing else (no caches, no
per-width state): calibration returns them, the sensitivity scores them, reconstruction returns refined ones,
and the bundle and the ONNX export write them. A quantized layer runs with one :class:`LayerParams` (its weight
and each input operand); ``None`` in a slot means "float, not quantized".

Activations:

- :class:`AffineParams`: static asymmetric uniform grid ``x -> (clamp(round(x / s) + z, 0, 2^b - 1) - z) s``, with
  one scale per tensor (``granularity="tensor"``, shape ``()``), per token position (``"position"``, shape
  ``x.shape[1:-1] + (1,)``, e.g. ``[N, 1]``) or per attention head (``"head"``, shape ``[H, 1, 1]``);
- :class:`DynamicParams`: ranges computed at run time, per token (``"token"``: each row's min/max, asymmetric) or
  int8 symmetric per row and block of ``block_size`` along the last dim (``"block"``: what onnxruntime's
  ``MatMulNBits`` with ``accuracy_level=4`` does to its input);
- :class:`TanQParams`: DopQ-ViT's tangent compander for post-softmax maps (``a``, centre ``c``);
- :class:`Log2Params`: power-of-two levels ``s 2^-q`` for post-softmax maps.

Weights: :class:`WeightParams`, asymmetric per output channel (``layout="channel"``), symmetric per output channel
(``"symmetric"``: zero point ``2^(b-1)``, i.e. int8 codes with zero point 0 after the shift) or asymmetric per block
of ``block_size`` input elements (``"block"``, [out, K] weights: MatMulNBits' layout). ``codes`` holds learned
integer codes (AdaRound) when reconstruction chose the rounding; without it the codes are ``round(w / s) + z``.

The records compare by identity (``eq=False``: they hold tensors); :func:`params_equal` compares values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Union

import torch

__all__ = [
    "DYNAMIC_GRANULARITIES",
    "FLOAT_BITS",
    "GRANULARITIES",
    "WEIGHT_LAYOUTS",
    "ActParams",
    "AffineParams",
    "DynamicParams",
    "LayerParams",
    "Log2Params",
    "TanQParams",
    "WeightParams",
    "map_tensors",
    "params_equal",
]

#: Bit-width that means "keep float" (no quantization).
FLOAT_BITS = 16
#: Granularities of static uniform activation scales.
GRANULARITIES = ("tensor", "position", "head")
#: Granularities of dynamic activation quantization.
DYNAMIC_GRANULARITIES = ("token", "block")
#: Layouts of weight scales.
WEIGHT_LAYOUTS = ("channel", "symmetric", "block")


def _check_bits(bits: int, what: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{what} bits must be an int in 1..8 (16 = float is written as no params), got {bits!r}")


@dataclass(frozen=True, eq=False)
class AffineParams:
    """Static asymmetric uniform activation grid (module doc). ``scale``/``zero_point``: tensors of one shape
    (``()`` per tensor, ``[N, 1]`` per position, ``[H, 1, 1]`` per head); zero points hold integers."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    granularity: str = "tensor"
    kind: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        shape = tuple(self.scale.shape)
        if shape != tuple(self.zero_point.shape):
            raise ValueError(f"scale shape {shape} differs from zero point shape {tuple(self.zero_point.shape)}")
        fits = {"tensor": len(shape) == 0 or self.scale.numel() == 1 and len(shape) <= 1,
                "position": len(shape) >= 2 and shape[-1] == 1,
                "head": len(shape) == 3 and shape[1:] == (1, 1)}[self.granularity]
        if not fits:
            raise ValueError(f"a {self.granularity} grid cannot have scales of shape {list(shape)} (tensor: one "
                             "value; position: [..., N, 1]; head: [H, 1, 1])")


@dataclass(frozen=True, eq=False)
class DynamicParams:
    """Run-time ranges: ``token`` (asymmetric per row of the last dim) or ``block`` (int8 symmetric per row and
    block of ``block_size`` along the last dim)."""

    bits: int
    granularity: str = "token"
    block_size: int | None = None
    kind: ClassVar[str] = "dynamic"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation")
        if self.granularity not in DYNAMIC_GRANULARITIES:
            raise ValueError(f"dynamic granularity must be one of {DYNAMIC_GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "block" and (self.block_size is None or self.bits != 8):
            raise ValueError("dynamic block quantization is int8 with a block_size: bits 8 and block_size set")


@dataclass(frozen=True, eq=False)
class TanQParams:
    """TanQ compander (``quant.quantizers.tanq``): ``a`` in (0, pi) and centre ``c`` as 0-dim float tensors."""

    a: torch.Tensor
    c: torch.Tensor
    bits: int
    kind: ClassVar[str] = "tanq"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation")


@dataclass(frozen=True, eq=False)
class Log2Params:
    """Log2 levels ``scale * 2^-q`` (``quant.quantizers.log2``); ``scale`` a 0-dim float tensor."""

    scale: torch.Tensor
    bits: int
    kind: ClassVar[str] = "log2"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation")


ActParams = Union[AffineParams, DynamicParams, TanQParams, Log2Params]  # noqa: UP007 - a runtime alias


@dataclass(frozen=True, eq=False)
class WeightParams:
    """Uniform weight grid (module doc). ``scale``/``zero_point``: ``[out, 1, ...]`` per channel or
    ``[out, n_blocks, 1]`` per block; ``codes``: learned integer codes (float or uint8 tensor shaped like the weight)
    or None for nearest rounding."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    layout: str = "channel"
    block_size: int | None = None
    codes: torch.Tensor | None = None
    kind: ClassVar[str] = "uniform_weight"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "weight")
        if self.layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"weight layout must be one of {WEIGHT_LAYOUTS}, got {self.layout!r}")
        if (self.layout == "block") != (self.block_size is not None):
            raise ValueError("a block_size is given exactly for the block layout")
        if tuple(self.scale.shape) != tuple(self.zero_point.shape):
            raise ValueError(f"scale shape {tuple(self.scale.shape)} differs from zero point shape "
                             f"{tuple(self.zero_point.shape)}")

    @property
    def symmetric(self) -> bool:
        return self.layout == "symmetric"

    def without_codes(self) -> WeightParams:
        """The same grid with nearest rounding (learned codes dropped)."""
        return replace(self, codes=None)


@dataclass(frozen=True, eq=False)
class LayerParams:
    """What one quantization layer runs with: its weight's params (None: float weight, or a layer without weights)
    and one entry per input operand (None: float input). ``wbits``/``abits`` are the bit pair this is (16 = float);
    a layer's ``abits`` is its first operand's."""

    weight: WeightParams | None = None
    inputs: tuple[ActParams | None, ...] = ()

    @property
    def wbits(self) -> int:
        return FLOAT_BITS if self.weight is None else int(self.weight.bits)

    @property
    def abits(self) -> int:
        first = self.inputs[0] if self.inputs else None
        return FLOAT_BITS if first is None else int(first.bits)

    @classmethod
    def float(cls, n_inputs: int) -> LayerParams:
        """No quantization at all for a layer with ``n_inputs`` input operands."""
        return cls(None, (None,) * n_inputs)


def map_tensors(params, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A copy of a params record (any of this module's types, or None) with ``fn`` applied to every tensor field
    (e.g. ``lambda t: t.to(device)``); ``LayerParams`` are mapped slot by slot."""
    if params is None:
        return None
    if isinstance(params, LayerParams):
        return LayerParams(map_tensors(params.weight, fn), tuple(map_tensors(p, fn) for p in params.inputs))
    changes = {f.name: fn(getattr(params, f.name)) for f in fields(params)
               if isinstance(getattr(params, f.name), torch.Tensor)}
    return replace(params, **changes) if changes else params


def params_equal(a, b) -> bool:
    """Whether two params records (or ``LayerParams``, or None) describe exactly the same quantization: same type,
    same settings and bit-identical tensors."""
    if a is None or b is None:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, LayerParams):
        return params_equal(a.weight, b.weight) and len(a.inputs) == len(b.inputs) and all(
            params_equal(x, y) for x, y in zip(a.inputs, b.inputs, strict=True))
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x.detach().cpu(), y.detach().cpu()):
                return False
        elif x != y:
            return False
    return True
