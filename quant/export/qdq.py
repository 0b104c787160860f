"""The one place ``QuantizeLinear`` / ``DequantizeLinear`` nodes are written: static activation grids and integer
weight codes, for the sim export and for every form of a deployment target that uses them.

- Activations (``Grid``, from per-tensor ``AffineParams``): ``[Clip ->] QuantizeLinear -> DequantizeLinear`` with a
  ``uint8`` container. ONNX saturates to the container's range, so for fewer than 8 bits the ``Clip`` bounds
  ``((0 - z) s, (2^b - 1 - z) s)`` restrict the codes to ``b`` bits first; the container's zero point is chosen so
  the ``b``-bit code range fits it. The result equals the fake quantizer's ``(clamp(round(x/s) + z) - z) s``
  (``Grid.simulate`` is that arithmetic in torch). A grid whose codes no ``uint8`` container holds has no ``Grid``
  (``grid_of`` returns None; the caller simulates it in float or refuses it).
- Weights (``WeightCodes``, from ``WeightParams`` per output channel): ``DequantizeLinear(codes, scale [C], zero
  point [C], axis)``. Codes are ``uint8``; symmetric weights (zero point ``2^(b-1)``) become ``int8`` codes
  ``code - 2^(b-1)`` with zero points 0 (what onnxruntime's integer kernels want); ``uint8`` codes whose values and
  zero points all fit in 4 bits are stored as ``uint4`` (two per byte, ``quant.packing.pack_nibbles``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from ..packing import pack_nibbles
from ..quantizers import AffineParams, WeightParams, weight_codes
from .graph import Sink

__all__ = ["Grid", "WeightCodes", "container", "dequantize_weight", "grid_of", "quantize_dequantize",
           "weight_codes_of"]

_CONTAINERS = ((np.uint8, 0, 255),)  # int8 would add nothing: its range is uint8's, shifted


def container(zero: int, qmax: int) -> tuple[type, int] | None:
    """A QDQ container (numpy dtype) and zero point holding the codes ``round(x/s)`` in ``[-zero, qmax - zero]``
    unsaturated, or None when no container can."""
    for dtype, cmin, cmax in _CONTAINERS:
        low, high = max(cmin, cmin + zero), min(cmax, cmax - qmax + zero)
        if low <= high:
            return dtype, min(max(zero, low), high)
    return None


@dataclass(frozen=True, eq=False)
class Grid:
    """A static per-tensor grid as ``QuantizeLinear -> DequantizeLinear`` run it: ``scale`` float32 ``()``,
    ``zero_point`` ``()`` in the container's dtype, ``clip`` float32 ``(low, high)`` bounds applied first (grids
    of fewer than 8 bits) or None."""

    scale: np.ndarray
    zero_point: np.ndarray
    clip: tuple[np.float32, np.float32] | None = None

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """What the ONNX nodes compute, in torch (float32): clip, ``round(x / s) + z`` saturated to the container,
        minus ``z``, times ``s``."""
        if self.clip is not None:
            x = torch.clamp(x, float(self.clip[0]), float(self.clip[1]))
        info = np.iinfo(self.zero_point.dtype)
        scale, zero = float(self.scale), float(self.zero_point)
        return (torch.clamp(torch.round(x / scale) + zero, info.min, info.max) - zero) * scale


def grid_of(params) -> Grid | None:
    """The ``Grid`` of per-tensor ``AffineParams`` whose integer zero point fits a container; None otherwise (other
    params kinds, grouped scales, an unrepresentable zero point)."""
    if not isinstance(params, AffineParams) or params.granularity != "tensor":
        return None
    zero = float(params.zero_point)
    qmax = 2**params.bits - 1
    choice = container(int(zero), qmax) if zero == round(zero) else None
    if choice is None:
        return None
    dtype, stored = choice
    scale = np.float32(params.scale.detach().float().reshape(()).item())
    clip = None
    if params.bits < 8:  # float32 arithmetic, as the fake quantizer's own bounds
        clip = (np.float32(np.float32(0.0 - zero) * scale), np.float32(np.float32(qmax - zero) * scale))
    return Grid(np.array(scale, np.float32), np.array(stored, dtype), clip)


def quantize_dequantize(sink: Sink, x: str, grid: Grid, local: str = "", output: str | None = None) -> str:
    """Append ``[Clip ->] QuantizeLinear -> DequantizeLinear`` of ``grid`` on the value ``x``, writing ``output``
    (a new value when None); returns the output's name. Initializers are named ``local.scale``,
    ``local.zero_point`` (and ``local.clip_low/high``)."""
    scale = sink.initializer(_join(local, "scale"), grid.scale)
    zero = sink.initializer(_join(local, "zero_point"), grid.zero_point)
    if grid.clip is not None:
        low = sink.initializer(_join(local, "clip_low"), np.array(grid.clip[0], np.float32))
        high = sink.initializer(_join(local, "clip_high"), np.array(grid.clip[1], np.float32))
        x = sink.node("Clip", [x, low, high], sink.value(_join(local, "clipped")))
    q = sink.node("QuantizeLinear", [x, scale, zero], sink.value(_join(local, "q")))
    sink.counts["qdq_activations"] += 1
    return sink.node("DequantizeLinear", [q, scale, zero], output or sink.value(_join(local, "dq")))


@dataclass(frozen=True, eq=False)
class WeightCodes:
    """Integer weight codes per channel for ``DequantizeLinear``: ``codes`` (``uint8`` or ``int8``, the graph's
    layout), ``scale`` float32 ``[C]``, ``zero_point`` ``[C]`` in the codes' dtype, ``axis`` (the channel axis of
    ``codes``)."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def transposed(self) -> WeightCodes:
        """The codes of a 2-D weight ``[N, K]`` stored as ``[K, N]`` (``axis`` 1): ``x @ W^T`` as one ``MatMul``."""
        if self.codes.ndim != 2 or self.axis != 0:
            raise ValueError(f"only [N, K] codes with axis 0 transpose; got {self.codes.shape}, axis {self.axis}")
        return WeightCodes(np.ascontiguousarray(self.codes.T), self.scale, self.zero_point, 1)


@torch.no_grad()
def weight_codes_of(weight: torch.Tensor, params: WeightParams) -> WeightCodes:
    """The ``WeightCodes`` (axis 0, ``weight``'s layout) of per-channel params (learned codes when they carry them);
    symmetric params give ``int8`` codes ``code - 2^(b-1)`` with zero points 0."""
    codes = weight_codes(weight.detach().float(), params)
    zero, dtype = params.zero_point.detach(), torch.uint8
    if params.symmetric:
        half = 2 ** (params.bits - 1)
        codes, zero, dtype = codes - half, zero - half, torch.int8
    return WeightCodes(codes.to(dtype).contiguous().cpu().numpy(),
                       params.scale.detach().float().reshape(-1).cpu().numpy(),
                       zero.reshape(-1).to(dtype).cpu().numpy(), 0)


def dequantize_weight(sink: Sink, weight: WeightCodes, local: str = "weight", output: str | None = None) -> str:
    """Append ``DequantizeLinear`` of the weight codes (initializers ``local.codes/.scale/.zero_point``; ``uint4``
    when every ``uint8`` code and zero point fits in 4 bits), writing ``output`` (a new value when None); returns
    the float weight's name."""
    codes, zero = weight.codes, weight.zero_point
    if codes.dtype == np.uint8 and max(int(codes.max(initial=0)), int(zero.max(initial=0))) <= 15:
        codes_name = sink.add_initializer(_join(local, "codes"), _uint4(codes))
        zero_name = sink.add_initializer(_join(local, "zero_point"), _uint4(zero))
        sink.counts["int4_weights"] += 1
    else:
        codes_name = sink.initializer(_join(local, "codes"), codes)
        zero_name = sink.initializer(_join(local, "zero_point"), zero)
        sink.counts["int8_weights" if codes.dtype == np.int8 else "uint8_weights"] += 1
    sink.counts["qdq_weights"] += 1
    scale = sink.initializer(_join(local, "scale"), weight.scale.astype(np.float32))
    return sink.node("DequantizeLinear", [codes_name, scale, zero_name], output or sink.value(_join(local, "dq")),
                     axis=weight.axis)


def _uint4(array: np.ndarray) -> onnx.TensorProto:
    """A ``uint4`` tensor of ``array`` (values in [0, 15]): the flattened values two per byte, first in the low
    nibble (ONNX's packing)."""
    packed = pack_nibbles(array.reshape(-1))
    return onnx.helper.make_tensor("", onnx.TensorProto.UINT4, array.shape, packed.tobytes(), raw=True)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)
