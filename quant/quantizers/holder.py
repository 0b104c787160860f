"""The one place that gives a quantization layer the params it runs with.

A layer (``quant.modules``) holds exactly one :class:`~quant.quantizers.params.LayerParams` value and nothing
else about quantization: no per-width caches, no restore-after, no enable flags. ``load_params`` replaces the value
(after checking it fits the layer); everything that changes how a layer quantizes goes through it, so no stage can
leave hidden state behind for another. ``model.to(device)`` moves the params with the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .params import LayerParams, WeightParams, map_tensors
from .training import SoftRoundedWeight
from .weight import params_shape

__all__ = ["ParamsHolder"]


class ParamsHolder(nn.Module):
    """Base of quantization layers: ``params`` (read-only) and ``load_params`` (the only writer).

    Subclasses set ``n_inputs`` (quantized input operands) and ``has_weight``.
    """

    n_inputs: int = 1
    has_weight: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["_params"] = LayerParams.float(self.n_inputs)

    @property
    def params(self) -> LayerParams:
        """The params this layer runs with (a value: replace it with ``load_params``, never edit it)."""
        return self.__dict__["_params"]

    def load_params(self, params: LayerParams) -> None:
        """Run with ``params`` from now on. ``ValueError`` when they do not fit this layer (operand count, weight
        params on a layer without weights, scale or code shapes that do not match the weight)."""
        if not isinstance(params, LayerParams):
            raise TypeError(f"load_params takes LayerParams, got {type(params).__name__}")
        if len(params.inputs) != self.n_inputs:
            raise ValueError(f"{type(self).__name__} has {self.n_inputs} quantized inputs, params give "
                             f"{len(params.inputs)}")
        weight = params.weight
        if weight is not None:
            if not self.has_weight:
                raise ValueError(f"{type(self).__name__} has no weight to quantize")
            base = weight.base if isinstance(weight, SoftRoundedWeight) else weight
            if not isinstance(base, WeightParams):
                raise TypeError(f"weight params must be WeightParams, got {type(base).__name__}")
            shape = tuple(self.weight.shape)
            expected = params_shape(shape, base.block_size)
            if tuple(base.scale.shape) != expected:
                raise ValueError(f"weight scale shape {tuple(base.scale.shape)} does not fit a weight of shape "
                                 f"{shape} ({base.layout} layout needs {expected})")
            if isinstance(weight, WeightParams) and weight.codes is not None and tuple(weight.codes.shape) != shape:
                raise ValueError(f"weight codes shape {tuple(weight.codes.shape)} differs from the weight's {shape}")
            device = self.weight.device
            if base.scale.device != device:
                params = map_tensors(params, lambda t: t.to(device))
        self.__dict__["_params"] = params

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        moved = map_tensors(self.__dict__["_params"], lambda t: fn(t) if isinstance(t, torch.Tensor) else t)
        self.__dict__["_params"] = moved
        return module
