"""Wrap a timm ViT/DeiT/Swin for fake quantization, address its quantization layers by timm names, and load params.

``wrap_model_(model)`` replaces, in place, every ``nn.Linear`` by ``QuantLinear``, the patch embedding
``nn.Conv2d`` by ``QuantConv2d`` and every timm ``Attention``/``WindowAttention`` by its quantized subclass with
``matmul_qk``/``matmul_av``. Layer keys are timm module names (``blocks.3.attn.qkv``, ``blocks.3.attn.matmul_av``,
``layers.1.downsample.reduction``). Every layer starts with float params, so the wrapped model computes what the
float model did; ``load_params_(model, {layer: LayerParams})`` gives layers the params they run with (typically the
chosen entries of a job's parameter table, ``quant.calibration.ParamTable``).

``wrap_model_(model, target="onnxruntime-cpu", block_size=32)`` wraps for a deployment target: every layer's bit
pair then names one of the forms the target executes (``quant.target``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .attention import install_quant_attention
from .modules import QuantConv2d, QuantLayer, QuantLinear
from .quantizers import FLOAT_BITS, LayerParams
from .target import TARGETS

__all__ = [
    "COMPONENTS",
    "Pair",
    "check_block_size",
    "component_of",
    "forms_of",
    "load_params_",
    "model_target",
    "quant_layers",
    "quantization_map",
    "uniform_pairs",
    "wrap_model_",
]

#: Component types of quantization layers (the type-aware sensitivity groups).
COMPONENTS = ("patch_embed", "qkv", "matmul_qk", "matmul_av", "proj", "fc1", "fc2", "reduction", "head", "linear")
#: A layer's bit pair ``(wbits, abits)`` (16 = float; layers without weights have wbits 16).
Pair = tuple[int, int]


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


def check_block_size(block_size: int) -> int:
    """``block_size`` as an int; ``ValueError`` unless it is a power of two >= 16."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size!r}")
    return block_size


def wrap_model_(model: nn.Module, *, target: str = "sim", block_size: int = 32) -> nn.Module:
    """Insert quantization layers into ``model`` in place (all with float params) and return it.

    target: ``sim`` or a deployment target of ``quant.target.TARGETS``; block_size: weight block size of the
    target's block-wise forms (power of two >= 16).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    block_size = check_block_size(block_size)
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
            wrapped: QuantLayer = QuantLinear(module, component_of(name), target, block_size)
        else:
            wrapped = QuantConv2d(module, "patch_embed", target, block_size)
        setattr(parent, child, wrapped)
    for module in list(model.modules()):
        install_quant_attention(module, target, block_size)
    return model


def model_target(model: nn.Module) -> tuple[str, int]:
    """``(target, block_size)`` a wrapped model was wrapped with (``("sim", 32)`` for a sim model)."""
    layer = next(iter(quant_layers(model).values()))
    return layer.target, int(layer.block_size)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """All quantization layers of a wrapped model, in forward order, keyed by timm module name."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}
    if not layers:
        raise ValueError("model has no quantization layers; call wrap_model_ first")
    return layers


def load_params_(model: nn.Module, params: Mapping[str, LayerParams], *, rest_float: bool = True) -> None:
    """Give the named layers their params; every other layer gets float params (``rest_float``) or keeps its own.
    Unknown names raise ``KeyError`` listing examples, before any layer changes."""
    layers = quant_layers(model)
    unknown = [name for name in params if name not in layers]
    if unknown:
        raise KeyError(f"unknown quantization layers {unknown[:5]}; known layers include {list(layers)[:5]}")
    for name, layer in layers.items():
        if name in params:
            layer.load_params(params[name])
        elif rest_float:
            layer.load_params(LayerParams.float(layer.n_inputs))


def uniform_pairs(layers: Mapping[str, QuantLayer] | Mapping[str, str], wbits: int, abits: int,
                  head_bits: int | None = 8, fixed: Mapping[str, Pair] | None = None) -> dict[str, Pair]:
    """``{layer: (wbits, abits)}`` of a uniform-precision job: every layer at ``(wbits, abits)``, the patch
    embedding and head at ``(head_bits, head_bits)`` (None = same as the rest) and the layers in ``fixed`` at their
    own pair. ``layers`` maps names to quantization layers or to component names. Layers without weights get wbits
    16. Unknown names in ``fixed`` raise ``KeyError`` listing examples."""
    components = {name: (v if isinstance(v, str) else v.component) for name, v in layers.items()}
    fixed = dict(fixed or {})
    unknown = [name for name in fixed if name not in components]
    if unknown:
        raise KeyError(f"unknown quantization layers {unknown[:5]}; known layers include {list(components)[:5]}")
    pairs = {}
    for name, component in components.items():
        if name in fixed:
            w, a = fixed[name]
        elif head_bits is not None and component in ("patch_embed", "head"):
            w, a = head_bits, head_bits
        else:
            w, a = wbits, abits
        pairs[name] = (FLOAT_BITS if component in ("matmul_qk", "matmul_av") else int(w), int(a))
    return pairs


def forms_of(model: nn.Module) -> dict[str, str]:
    """``{layer: form name}`` of a model wrapped for a runtime target (``QuantLayer.form``)."""
    return {name: layer.form.name for name, layer in quant_layers(model).items()}


def quantization_map(model: nn.Module) -> dict[str, dict]:
    """``{layer name: {"component", "wbits", "abits", "weight": {...} | None, "inputs": [...]}}``: the plain
    description of how each layer quantizes (kinds, bits, layouts, granularities; no tensors)."""
    from .quantizers.serialize import to_record

    out = {}
    for name, layer in quant_layers(model).items():
        params = layer.params
        entry: dict = {"component": layer.component, "wbits": layer.wbits, "abits": layer.abits}
        if layer.target != "sim":
            entry["form"] = layer.form.name
        entry["weight"] = None if params.weight is None else to_record(params.weight)[0]
        entry["inputs"] = [None if p is None else to_record(p)[0] for p in params.inputs]
        out[name] = entry
    return out
