"""The whole float32 model as ONNX, the reference the latency table's ``rest_ms`` is measured against.

``float_copy(qmodel)`` is a copy of a wrapped model whose quantization layers are plain ``nn.Linear`` /
``nn.Conv2d`` / ``a @ b`` modules (no quantizer state involved, calibrated or not); ``export_fp32`` writes it with
PyTorch's ``torch.export``-based exporter at opset 21 with a dynamic batch, as ``quant.export.export_onnx``
does.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from ....modules import QuantConv2d, QuantLayer, QuantLinear, QuantMatMul

__all__ = ["export_fp32", "float_copy"]


class _MatMul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def _plain(layer: QuantLayer) -> nn.Module:
    if isinstance(layer, QuantLinear):
        out: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, QuantConv2d):
        out = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, bias=layer.bias is not None)
    elif isinstance(layer, QuantMatMul):
        return _MatMul()
    else:  # pragma: no cover - every QuantLayer kind is handled above
        raise TypeError(f"unsupported quantization layer type {type(layer).__name__}")
    with torch.no_grad():
        out.weight.copy_(layer.weight.detach())
        if layer.bias is not None:
            out.bias.copy_(layer.bias.detach())
    return out


def float_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with every ``QuantLayer`` replaced by its float module."""
    out = copy.deepcopy(model).cpu().float().eval()
    for name, module in list(out.named_modules()):
        if isinstance(module, QuantLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, _plain(module))
    return out


def export_fp32(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Write the float32 ONNX model of ``model`` (wrapped or float) for images of ``input_shape`` (C, H, W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = float_copy(model)
    example = torch.zeros((2, *input_shape), device="cpu")  # the float copy is exported from the CPU
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(plain, (example,), dynamo=True, opset_version=21, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False,
                                    verbose=False)
    import onnx

    onnx.save_model(program.model_proto, str(path))
    return path
