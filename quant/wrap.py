"""Wrap a timm ViT/DeiT/Swin for fake quantization and address its quantization layers by timm names.

``wrap_model_(model, softmax="tanq")`` replaces, in place, every ``nn.Linear`` by ``QuantLinear``, the patch
embedding ``nn.Conv2d`` by ``QuantConv2d`` and every timm ``Attention``/``WindowAttention`` by its quantized
subclass with ``matmul_qk``/``matmul_av``. Layer keys are timm module names (``blocks.3.attn.qkv``,
``blocks.3.attn.matmul_av``, ``layers.1.downsample.reduction``). All quantizers start at 8 bits and must be
calibrated (``quant.calibrate``) before use; ``set_quant_enabled_(model, False, False)`` gives float behaviour.

``wrap_model_(model, target="onnxruntime-cpu", block_size=32)`` wraps for a deployment target: every layer then
takes only the forms the target executes (``quant.target``; ``set_bits`` names them by their ``(wbits, abits)``
keys), the post-softmax quantizer is a plain uniform one whatever ``softmax`` says (onnxruntime has no
log2/TanQ kernel), and every layer starts in its ``int8`` form.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .attention import install_quant_attention
from .modules import QuantConv2d, QuantLayer, QuantLinear
from .quantizers import ActivationQuantizer, Log2Quantizer, TanQuantizer, UniformQuantizer, WeightQuantizer
from .target import TARGETS

__all__ = [
    "COMPONENTS",
    "SOFTMAX_QUANTIZERS",
    "check_block_size",
    "component_of",
    "forms_of",
    "model_target",
    "quant_layers",
    "quantization_map",
    "set_bits_",
    "set_quant_enabled_",
    "set_uniform_bits_",
    "wrap_model_",
]

#: Component types of quantization layers (the type-aware sensitivity groups).
COMPONENTS = ("patch_embed", "qkv", "matmul_qk", "matmul_av", "proj", "fc1", "fc2", "reduction", "head", "linear")
SOFTMAX_QUANTIZERS = ("uniform", "log2", "tanq")


def component_of(name: str) -> str:
    """Component type of a timm module name (``blocks.0.attn.qkv`` -> ``qkv``)."""
    last = name.rsplit(".", 1)[-1]
    if name.startswith("head"):
        return "head"
    if name.endswith("patch_embed.proj"):
        return "patch_embed"
    if last in ("qkv", "proj", "fc1", "fc2", "reduction", "matmul_qk", "matmul_av"):
        return last
    return "linear"


def _softmax_quantizer(kind: str, minmax: bool) -> ActivationQuantizer:
    if kind == "uniform":
        return UniformQuantizer(minmax=minmax)
    if kind == "log2":
        return Log2Quantizer()
    if kind == "tanq":
        return TanQuantizer()
    raise ValueError(f"softmax quantizer must be one of {SOFTMAX_QUANTIZERS}, got {kind!r}")


def check_block_size(block_size: int) -> int:
    """``block_size`` as an int; ``ValueError`` unless it is a power of two >= 16."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size!r}")
    return block_size


def wrap_model_(model: nn.Module, *, softmax: str = "tanq", minmax: bool = False, target: str = "sim",
                block_size: int = 32) -> nn.Module:
    """Insert fake quantizers into ``model`` in place and return it.

    softmax: quantizer of the post-softmax attention map (``uniform``, ``log2`` or ``tanq``; a target other than
    ``sim`` always uses ``uniform``). minmax: use plain min/max ranges everywhere instead of MSE range searches.
    target: ``sim`` or a deployment target of ``quant.target.TARGETS``; block_size: weight block size of the
    target's block-wise forms (power of two >= 16).
    """
    if softmax not in SOFTMAX_QUANTIZERS:
        raise ValueError(f"softmax quantizer must be one of {SOFTMAX_QUANTIZERS}, got {softmax!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    block_size = check_block_size(block_size)
    if target != "sim":
        softmax = "uniform"
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("model is already wrapped for quantization")
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and name.endswith("patch_embed.proj")):
            targets.append((name, module))
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, nn.Linear):
            wrapped: QuantLayer = QuantLinear(module, component_of(name))
        else:
            wrapped = QuantConv2d(module)
        wrapped.weight_quantizer.minmax = minmax
        wrapped.input_quantizer.minmax = minmax
        setattr(parent, child, wrapped)
    for module in list(model.modules()):
        if install_quant_attention(module, _softmax_quantizer(softmax, minmax)):
            for quantizer in (module.matmul_qk.quantizer_a, module.matmul_qk.quantizer_b, module.matmul_av.quantizer_b):
                quantizer.minmax = minmax
    if target != "sim":
        for layer in quant_layers(model).values():
            layer.target, layer.block_size = target, block_size
            for quantizer in layer.activation_quantizers():
                quantizer.include_zero = True  # uint8 zero points (every one is a UniformQuantizer here)
            layer.set_bits(8, 8)  # the int8 form (matmuls: (16, 8)); nothing is calibrated yet
    _to_model_device_(model)
    return model


def model_target(model: nn.Module) -> tuple[str, int]:
    """``(target, block_size)`` a wrapped model was wrapped with (``("sim", 32)`` for a sim model)."""
    layer = next(iter(quant_layers(model).values()))
    return layer.target, int(layer.block_size)


def _to_model_device_(model: nn.Module) -> None:
    """Move the quantizers just created (on the CPU) to the device of the model's parameters."""
    param = next(model.parameters(), None)
    if param is None or param.device.type == "cpu":
        return
    for module in model.modules():
        if isinstance(module, (ActivationQuantizer, WeightQuantizer)):
            module.to(param.device)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """All quantization layers of a wrapped model, in forward order, keyed by timm module name."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}
    if not layers:
        raise ValueError("model has no quantization layers; call wrap_model_ first")
    return layers


def set_bits_(model: nn.Module, bits: Mapping[str, tuple[int, int]]) -> None:
    """Set ``{layer name: (wbits, abits)}`` (16 = float). Unknown names raise ``KeyError`` listing examples."""
    layers = quant_layers(model)
    unknown = [name for name in bits if name not in layers]
    if unknown:
        raise KeyError(f"unknown quantization layers {unknown[:5]}; known layers include {list(layers)[:5]}")
    for name, (wbits, abits) in bits.items():
        layers[name].set_bits(wbits, abits)


def set_uniform_bits_(model: nn.Module, wbits: int, abits: int, head_bits: int | None = 8,
                      fixed: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Give every layer ``wbits``/``abits``; the patch embedding and head get ``head_bits`` (None = same), and the
    layers named in ``fixed`` their own ``(wbits, abits)`` directly (a runtime target may not execute the uniform
    pair on them). Unknown names in ``fixed`` raise ``KeyError`` listing examples, before any layer changes."""
    layers = quant_layers(model)
    fixed = dict(fixed or {})
    unknown = [name for name in fixed if name not in layers]
    if unknown:
        raise KeyError(f"unknown quantization layers {unknown[:5]}; known layers include {list(layers)[:5]}")
    for name, layer in layers.items():
        if name in fixed:
            layer.set_bits(*fixed[name])
        elif head_bits is not None and layer.component in ("patch_embed", "head"):
            layer.set_bits(head_bits, head_bits)
        else:
            layer.set_bits(wbits, abits)


def forms_of(model: nn.Module) -> dict[str, str]:
    """``{layer: form name}`` of a model wrapped for a runtime target (``QuantLayer.form``)."""
    return {name: layer.form.name for name, layer in quant_layers(model).items()}


def set_quant_enabled_(model: nn.Module, weights: bool | None = None, activations: bool | None = None) -> None:
    """Enable/disable weight and/or activation quantization in every layer."""
    for layer in quant_layers(model).values():
        layer.set_quant_enabled(weights, activations)


def quantization_map(model: nn.Module) -> dict[str, dict]:
    """``{layer name: {"component", "weights": {...}, "activations": [...]}}`` for reports and storage."""
    return {name: layer.describe() for name, layer in quant_layers(model).items()}
