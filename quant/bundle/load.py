"""Loading a bundle: rebuild the architecture, wrap it, and give every layer the params the bundle stores.

Every layer's weight params carry the stored integer codes, and the layer's float weight is set to the dequantized
``(codes - zero) * scale`` computed exactly as the fake quantizer computes it, so the rebuilt model's logits are
bit-identical to the saved in-memory model's on the same device. Everything is validated: a missing file or tensor,
an unknown format version, a tensor of the wrong shape or dtype, an unexpected tensor or a map entry that does not fit
the architecture raises :class:`~quant.bundle.format.BundleError` naming the file, tensor or layer at fault.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..modules import QuantLayer
from ..packing import packed_nbytes, unpack_codes
from ..quantizers import LayerParams, WeightParams
from ..quantizers.serialize import from_record, to_record
from ..quantizers.weight import dequantize_codes, params_shape
from ..wrap import quant_layers, wrap_model_
from .format import CONFIG_FILE, MODEL_FILE, BundleError, read_config

__all__ = ["load_quantized"]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise BundleError(f"{MODEL_FILE} cannot be read as safetensors: {exc}") from exc


def _take(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise BundleError(f"{MODEL_FILE} is missing tensor {key!r}")
    return tensors.pop(key)


def _check(tensor: torch.Tensor, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise BundleError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if tensor.dtype != dtype:
        raise BundleError(f"tensor {key!r} has dtype {tensor.dtype}, expected {dtype}")


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._parameters:
        current = module._parameters[attr]
        requires_grad = bool(current.requires_grad) if current is not None else True
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=requires_grad)
    else:
        module._buffers[attr] = tensor


def _weight_params(model: nn.Module, name: str, layer: QuantLayer, entry: dict,
                   tensors: dict[str, torch.Tensor]) -> WeightParams:
    if not isinstance(entry, dict):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} 'weight' must be an object or null")
    bits, shape = entry.get("bits"), tuple(entry.get("shape") or ())
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} has packed weights with invalid bits {bits!r}")
    expected = tuple(layer.weight.shape)
    if shape != expected:
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} weight shape {list(shape)} does not match the "
                          f"architecture's {list(expected)}")
    block_size = entry.get("block_size")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1 or len(expected) != 2):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} has an invalid weight block_size {block_size!r}")
    dtype = layer.weight.dtype
    view = params_shape(expected, block_size)
    numel, n_zero = int(torch.Size(expected).numel()), int(torch.Size(view).numel())
    codes = _take(tensors, f"{name}.weight.codes")
    _check(codes, f"{name}.weight.codes", (packed_nbytes(numel, bits),), torch.uint8)
    scale = _take(tensors, f"{name}.weight.scale")
    _check(scale, f"{name}.weight.scale", view, dtype)
    zero_packed = _take(tensors, f"{name}.weight.zero_point")
    _check(zero_packed, f"{name}.weight.zero_point", (packed_nbytes(n_zero, bits),), torch.uint8)
    zero = unpack_codes(zero_packed, bits, n_zero).to(dtype).reshape(view)
    meta = {k: v for k, v in entry.items() if k not in ("shape", "dtype")}
    try:
        params = from_record({**meta, "codes": False}, {"scale": scale, "zero_point": zero}, where=f"layer {name!r}")
    except ValueError as exc:
        raise BundleError(f"{CONFIG_FILE}: {exc}") from exc
    if not isinstance(params, WeightParams):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} weight kind {entry.get('kind')!r} is not a weight kind")
    unpacked = unpack_codes(codes, bits, numel).reshape(expected)
    params = WeightParams(scale, zero, bits, params.layout, params.block_size, unpacked)
    _assign(model, f"{name}.weight", dequantize_codes(unpacked, params))
    return params


def _input_params(name: str, operand: int, entry, tensors: dict[str, torch.Tensor]):
    if entry is None:
        return None
    prefix = f"{name}.inputs.{operand}."
    values = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    try:
        params = from_record(entry, values, where=f"layer {name!r} input {operand}")
    except ValueError as exc:
        raise BundleError(f"{CONFIG_FILE}: {exc}") from exc
    for field in to_record(params)[1]:  # only the record's own tensors: any other is reported as unused
        del tensors[prefix + field]
    return params


def _layer_params(model: nn.Module, name: str, layer: QuantLayer, entry, tensors) -> LayerParams:
    if not isinstance(entry, dict):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} entry must be an object")
    weight_entry = entry.get("weight")
    if weight_entry is not None and not layer.has_weight:
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} has no weight, but its entry stores one")
    weight = _weight_params(model, name, layer, weight_entry, tensors) if weight_entry is not None else None
    inputs = entry.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != layer.n_inputs:
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} needs {layer.n_inputs} 'inputs' entries")
    return LayerParams(weight, tuple(_input_params(name, i, e, tensors) for i, e in enumerate(inputs)))


def load_quantized(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the quantized model saved by :func:`~quant.bundle.save_bundle` in folder ``path`` (eval mode, on
    ``device``), every layer running with the stored params. Raises :class:`BundleError` (module doc)."""
    from ..models import ModelLoadError, build_model

    directory = Path(path)
    config = read_config(directory)
    spec = config["model"]
    try:
        if isinstance(spec.get("arch"), str):
            model = build_model(spec["arch"], spec.get("timm_kwargs") or {})
        else:
            model = build_model(spec["name"], spec.get("arch_kwargs") or {})
        wrap_model_(model, target=config.get("target", "sim"), block_size=config.get("block_size", 32))
    except (ModelLoadError, KeyError, ValueError) as exc:
        raise BundleError(f"{CONFIG_FILE}: cannot rebuild model {spec.get('name')!r}: {exc}") from exc
    tensors = _read_tensors(directory / MODEL_FILE)
    layers = quant_layers(model)
    unknown = [name for name in config["layers"] if name not in layers]
    if unknown:
        raise BundleError(f"{CONFIG_FILE} names layers {unknown[:3]} that the architecture does not have")
    params: dict[str, LayerParams] = {}
    for name, layer in layers.items():
        if name not in config["layers"]:
            raise BundleError(f"{CONFIG_FILE} has no entry for quantization layer {name!r}")
        if layer.has_weight and getattr(layer, "bias", None) is None and f"{name}.bias" in tensors:
            # reparameterization folded a LayerNorm shift into a layer built without bias (Swin's reduction)
            layer.bias = nn.Parameter(layer.weight.new_zeros(layer.weight.shape[0]))
        params[name] = _layer_params(model, name, layer, config["layers"][name], tensors)
    reference = model.state_dict()
    stored_as_codes = {f"{name}.weight" for name, p in params.items() if p.weight is not None}
    for key in reference:
        if key in stored_as_codes:
            continue
        tensor = _take(tensors, key)
        _check(tensor, key, tuple(reference[key].shape), reference[key].dtype)
        _assign(model, key, tensor)
    if tensors:
        raise BundleError(f"{MODEL_FILE} has {len(tensors)} tensors the rebuilt model does not use, "
                          f"e.g. {sorted(tensors)[:3]}")
    for name, layer in layers.items():
        try:
            layer.load_params(params[name])
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{CONFIG_FILE}: layer {name!r}: {exc}") from exc
    return model.to(device).eval()
