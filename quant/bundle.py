"""The quantized-model bundle (format version 2): ``model.safetensors`` + ``quant_config.json`` + ``report.json``.

``model.safetensors`` holds, for every quantization layer whose weight quantizer is active (2..8 bits):

- ``{layer}.weight.codes``: uint8, the integer codes ``clamp(round(w / scale) + zero, 0, 2^b - 1)`` of the weight
  (row-major) bit-packed to their width ``b`` (:mod:`quant.packing`, layout ``lsb8``: 8 codes in ``b`` bytes);
- ``{layer}.weight.scale``: float32 per-output-channel scales, shape ``[out, 1, ...]`` (broadcasts on the weight);
- ``{layer}.weight.zero_point``: uint8, the per-channel zero points (integers in ``[0, 2^b - 1]``) packed the same way;

and, under their ``state_dict`` names, every other tensor of the wrapped model at its own dtype: biases, float
weights of layers kept at 16 bits, (reparameterized) LayerNorm weights and biases, position embeddings, class
token, Swin relative position bias tables, and the activation quantizer parameters (uniform ``scale`` and
``zero_point``, log2 ``scale``, TanQ ``a``; grouped uniform scales, per token position or per head, are stored
flattened and their ``shape`` is in the layer's config entry). The parameters of weight quantizers that are off are not stored.

``quant_config.json`` holds ``format``/``format_version``, the architecture (``model.name`` + ``arch_kwargs`` as
given to :func:`quant.models.build_model`, and the resolved timm ``arch`` + ``timm_kwargs`` that loading rebuilds from,
so a built-in model's bundle does not depend on the shipped float weights), the wrapping recipe (``softmax``, ``minmax``), the packing layout,
per-layer settings (component, ``wbits``/``abits``, weight quantizer kind/bits/enabled/shape/storage and each
activation quantizer's kind/bits/enabled/granularity plus its parameters for reading) and the library versions.

Deployment targets (models wrapped with ``target="onnxruntime-cpu"``): ``quant_config.json`` also holds ``target`` and
``block_size`` (absent: ``sim``), a block-wise weight entry its ``block_size`` (scales ``[out, n_blocks, 1]``, zero
points ``out * n_blocks`` codes, weight codes of the unpadded [out, K] weight), a symmetric one ``symmetric: true``,
and an activation entry ``dynamic_block`` / ``include_zero`` when set.

``load_quantized`` rebuilds the architecture, wraps it with the same recipe (and target) and sets every weight to the
dequantized ``(codes - zero) * scale`` computed exactly as the fake quantizer computes it; the (still active)
weight quantizer maps that grid point back onto itself, so the rebuilt model's logits are bit-identical to the
saved in-memory model's on the same device. Loading validates everything and raises :class:`BundleError` with a
message naming the file, tensor or layer at fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

from . import __version__
from .modules import QuantLayer
from .packing import PACKING, pack_codes, packed_nbytes, unpack_codes
from .quantizers import FLOAT_BITS, ActivationQuantizer, UniformQuantizer
from .quantizers.weight import block_view, n_blocks
from .wrap import model_target, quant_layers, wrap_model_

__all__ = ["BUNDLE_FORMAT_VERSION", "BundleError", "bundle_sizes", "load_quantized", "save_bundle"]

BUNDLE_FORMAT = "mpq-bundle"
BUNDLE_FORMAT_VERSION = 2
MODEL_FILE, CONFIG_FILE, REPORT_FILE = "model.safetensors", "quant_config.json", "report.json"
_CODES, _SCALE, _ZERO = "weight.codes", "weight.scale", "weight.zero_point"
_ACTIVATIONS = "activation_params"


class BundleError(ValueError):
    """A bundle that cannot be written or loaded (missing file or tensor, wrong version, shape mismatch...)."""


# ---- saving ----------------------------------------------------------------------------------------------
def _param_shape(shape: tuple[int, ...], block_size: int | None) -> tuple[int, ...]:
    """Shape of a weight's scales/zero points: per channel ``[out, 1, ...]``, block-wise ``[out, n_blocks, 1]``."""
    if block_size is not None:
        return (shape[0], n_blocks(shape[-1], block_size), 1)
    return (shape[0],) + (1,) * (len(shape) - 1)


def _packed_weight(name: str, layer: QuantLayer) -> tuple[dict[str, torch.Tensor], dict]:
    """The three tensors of an active weight quantizer and its config entry; checks they reproduce it exactly."""
    quantizer, weight = layer.weight_quantizer, layer.weight.detach()
    bits = int(quantizer.bits)
    block_size = getattr(quantizer, "block_size", None)
    if not 1 <= bits <= 8:
        raise BundleError(f"layer {name!r}: weight bits {bits} cannot be packed (use 2..8, or 16 for float)")
    if not quantizer.calibrated:
        raise BundleError(f"layer {name!r}: weight quantizer is not calibrated; calibrate the model before saving")
    if block_size is not None and weight.dim() != 2:
        raise BundleError(f"layer {name!r}: block-wise weights need a 2-D weight, got {list(weight.shape)}")
    scale, zero = quantizer.scale.detach(), quantizer.zero_point.detach()
    view = _param_shape(tuple(weight.shape), block_size)
    if tuple(scale.shape) != view or tuple(zero.shape) != view:
        layout = f"block-wise (block_size {block_size})" if block_size is not None else "per-channel"
        raise BundleError(f"layer {name!r}: weight scale/zero point have shapes {tuple(scale.shape)}/"
                          f"{tuple(zero.shape)}, expected {layout} {view}")
    qmax = 2**bits - 1
    if not torch.equal(zero, zero.round()) or float(zero.min()) < 0 or float(zero.max()) > qmax:
        raise BundleError(f"layer {name!r}: weight zero points must be integers in [0, {qmax}]")
    with torch.no_grad():
        codes = quantizer.integer_weight(weight)
        if not torch.equal(_dequantize(codes, scale, zero, block_size), quantizer(weight)):
            raise BundleError(f"layer {name!r}: the weight quantizer's output is not (codes - zero) * scale; "
                              "this quantizer cannot be stored as integer codes")
    tensors = {
        f"{name}.{_CODES}": pack_codes(codes, bits),
        f"{name}.{_SCALE}": scale.contiguous().cpu(),
        f"{name}.{_ZERO}": pack_codes(zero, bits),
    }
    entry = {"kind": quantizer.kind, "bits": bits, "enabled": True, "stored": "packed", "packing": PACKING,
             "shape": list(weight.shape), "dtype": str(weight.dtype).removeprefix("torch.")}
    if block_size is not None:
        entry["block_size"] = int(block_size)
    elif getattr(quantizer, "symmetric", False):
        entry["symmetric"] = True
    return tensors, entry


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                block_size: int | None = None) -> torch.Tensor:
    """``(codes - zero) * scale`` in the scale's dtype: the same float operations as ``fake_quant_uniform``
    (block-wise: on the zero-padded [out, n_blocks, block_size] view, cropped back to [out, K])."""
    if block_size is None:
        return (codes.to(scale.dtype) - zero) * scale
    blocks = block_view(codes.to(scale.dtype), block_size)
    return ((blocks - zero) * scale).reshape(codes.shape[0], -1)[:, : codes.shape[1]]


def _activation_entry(quantizer, offset: int) -> dict:
    entry = quantizer.describe()
    entry.update(bits=int(quantizer.bits), enabled=bool(quantizer.enabled), offset=offset)
    if getattr(quantizer, "include_zero", False):
        entry["include_zero"] = True
    return entry


def _activation_values(name: str, quantizer) -> list[torch.Tensor]:
    values = []
    for local, tensor in quantizer.state_dict().items():
        if tensor.dtype != torch.float32:
            raise BundleError(f"layer {name!r}: activation quantizer tensor {local!r} is {tensor.dtype}, "
                              "only float32 is stored")
        values.append(tensor.detach().reshape(-1).cpu())
    return values


def _bundle_contents(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    entries: dict[str, dict] = {}
    act_values: list[torch.Tensor] = []
    offset = 0
    for name, layer in quant_layers(model).items():
        entry: dict = {"component": layer.component, "wbits": int(layer.wbits), "abits": int(layer.abits)}
        if layer.has_weight:
            quantizer = layer.weight_quantizer
            skip.update({f"{name}.weight_quantizer.scale", f"{name}.weight_quantizer.zero_point"})
            if quantizer.active:
                packed, entry["weights"] = _packed_weight(name, layer)
                tensors.update(packed)
                skip.add(f"{name}.weight")
            else:
                entry["weights"] = {"kind": quantizer.kind, "bits": int(quantizer.bits),
                                    "enabled": bool(quantizer.enabled), "stored": "float"}
        entry["activations"] = []
        for quantizer in layer.activation_quantizers():
            entry["activations"].append(_activation_entry(quantizer, offset))
            values = _activation_values(name, quantizer)
            act_values += values
            offset += sum(v.numel() for v in values)
        skip.update(f"{module}.{local}" for module, quantizer in model.named_modules()
                    if module.startswith(f"{name}.") and isinstance(quantizer, ActivationQuantizer)
                    for local in quantizer.state_dict())
        entries[name] = entry
    for key, value in state.items():
        if key not in skip:
            tensors[key] = value.detach().contiguous().cpu()
    tensors[_ACTIVATIONS] = torch.cat(act_values) if act_values else torch.zeros(0)
    return tensors, entries


def _model_entry(model_spec: dict) -> dict:
    """``name``/``arch_kwargs`` as given plus the resolved timm ``arch``/``timm_kwargs`` the bundle is rebuilt from
    (so a bundle of a built-in model loads without the built-in's shipped weights or its current definition)."""
    from .models import ModelLoadError, model_info

    name, arch_kwargs = model_spec["name"], dict(model_spec.get("arch_kwargs") or {})
    try:
        info = model_info(name, arch_kwargs)
    except ModelLoadError as exc:
        raise BundleError(f"cannot describe model {name!r}: {exc}") from exc
    return {"name": name, "arch_kwargs": arch_kwargs, "arch": info["arch"], "timm_kwargs": info["arch_kwargs"]}


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    safetensors.torch.save_file(tensors, str(path),
                                metadata={"format": BUNDLE_FORMAT, "format_version": str(BUNDLE_FORMAT_VERSION)})
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # safetensors creates 0600 files; give the bundle's files the same mode


def save_bundle(
    model: nn.Module,
    directory: str | Path,
    *,
    model_spec: dict,
    recipe: dict,
    report: dict | None = None,
) -> Path:
    """Write ``model`` (a wrapped, calibrated model) as a bundle into ``directory`` and return the folder.

    model_spec: ``{"name", "arch_kwargs"}`` as given to ``quant.models.build_model`` (other keys are ignored: the
    bundle holds every weight). recipe: ``{"softmax", "minmax"}`` as given to ``wrap_model_``.
    Raises :class:`BundleError` when a weight quantizer cannot be stored as packed integer codes or the model
    name is unknown; nothing is written then.
    """
    directory = Path(directory)
    tensors, layers = _bundle_contents(model)
    model_entry = _model_entry(model_spec)
    target, block_size = model_target(model)
    directory.mkdir(parents=True, exist_ok=True)
    _write_safetensors(tensors, directory / MODEL_FILE)
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "model": model_entry,
        "recipe": {"softmax": recipe["softmax"], "minmax": bool(recipe["minmax"])},
        "packing": PACKING,
        **({"target": target, "block_size": block_size} if target != "sim" else {}),
        "layers": layers,
        "versions": {"mpq": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "safetensors": safetensors.__version__},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    (directory / REPORT_FILE).write_text(json.dumps(report or {}, indent=1, default=str))
    return directory


# ---- loading ---------------------------------------------------------------------------------------------
def _read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise BundleError(f"bundle folder {str(directory)!r} does not exist")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"bundle {str(directory)!r} is missing {name}")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{CONFIG_FILE} must hold a JSON object")
    version = config.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format_version {version!r} in {CONFIG_FILE}; this mpq "
                          f"({__version__}) reads version {BUNDLE_FORMAT_VERSION}: re-export the model")
    for key in ("model", "recipe", "layers"):
        if not isinstance(config.get(key), dict):
            raise BundleError(f"{CONFIG_FILE} has no {key!r} section")
    if config.get("packing", PACKING) != PACKING:
        raise BundleError(f"unknown packing {config.get('packing')!r} in {CONFIG_FILE}; expected {PACKING!r}")
    return config


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


def _load_packed_weight(model: nn.Module, name: str, layer: QuantLayer, entry: dict,
                        tensors: dict[str, torch.Tensor]) -> None:
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
    view = _param_shape(expected, block_size)
    numel = int(torch.Size(expected).numel())
    n_zero = int(torch.Size(view).numel())
    key = f"{name}.{_CODES}"
    codes = _take(tensors, key)
    _check(codes, key, (packed_nbytes(numel, bits),), torch.uint8)
    key = f"{name}.{_SCALE}"
    scale = _take(tensors, key)
    _check(scale, key, view, dtype)
    key = f"{name}.{_ZERO}"
    zero_packed = _take(tensors, key)
    _check(zero_packed, key, (packed_nbytes(n_zero, bits),), torch.uint8)
    zero = unpack_codes(zero_packed, bits, n_zero).to(dtype).reshape(view)
    weight = _dequantize(unpack_codes(codes, bits, numel).reshape(expected), scale, zero, block_size)
    quantizer = layer.weight_quantizer
    _assign(model, f"{name}.weight", weight)
    quantizer.scale = nn.Parameter(scale, requires_grad=False)
    quantizer.zero_point = zero
    quantizer.bits, quantizer.enabled, quantizer.calibrated = bits, True, True
    quantizer.block_size, quantizer.symmetric = block_size, bool(entry.get("symmetric", False))


def _configure_layer(model: nn.Module, name: str, layer: QuantLayer, entry: dict,
                     tensors: dict[str, torch.Tensor], act_params: torch.Tensor, offset: int) -> int:
    """Set layer ``name`` up from its config entry; returns the offset of the next activation parameters."""
    if not isinstance(entry, dict):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} entry must be an object")
    if layer.has_weight:
        weights = entry.get("weights")
        if not isinstance(weights, dict):
            raise BundleError(f"{CONFIG_FILE}: layer {name!r} has no 'weights' entry")
        if weights.get("stored") == "packed":
            _load_packed_weight(model, name, layer, weights, tensors)
        elif weights.get("stored") == "float":
            layer.weight_quantizer.block_size = weights.get("block_size")
            layer.weight_quantizer.symmetric = bool(weights.get("symmetric", False))
            layer.weight_quantizer.bits = int(weights.get("bits", FLOAT_BITS))
            layer.weight_quantizer.enabled = bool(weights.get("enabled", True))
            layer.weight_quantizer.calibrated = True
            if layer.weight_quantizer.active:
                raise BundleError(f"{CONFIG_FILE}: layer {name!r} stores float weights for an active "
                                  f"{layer.weight_quantizer.bits}-bit weight quantizer")
        else:
            raise BundleError(f"{CONFIG_FILE}: layer {name!r} weights 'stored' must be 'packed' or 'float', "
                              f"got {weights.get('stored')!r}")
    quantizers = layer.activation_quantizers()
    acts = entry.get("activations")
    if not isinstance(acts, list) or len(acts) != len(quantizers):
        raise BundleError(f"{CONFIG_FILE}: layer {name!r} needs {len(quantizers)} activation quantizer entries")
    for quantizer, act in zip(quantizers, acts, strict=True):
        if act.get("kind") != quantizer.kind:
            raise BundleError(f"{CONFIG_FILE}: layer {name!r} activation quantizer kind {act.get('kind')!r} "
                              f"does not match the recipe's {quantizer.kind!r}")
        quantizer.bits = int(act.get("bits", FLOAT_BITS))
        quantizer.enabled = bool(act.get("enabled", True))
        if isinstance(quantizer, UniformQuantizer):
            dynamic = act.get("dynamic_block")
            if dynamic is not None and (not isinstance(dynamic, int) or dynamic < 1):
                raise BundleError(f"{CONFIG_FILE}: layer {name!r} has an invalid dynamic_block {dynamic!r}")
            quantizer.dynamic_block = dynamic
            quantizer.include_zero = bool(act.get("include_zero", False))
            granularity, shape = act.get("granularity", "tensor"), act.get("shape")
            if granularity in ("position", "head"):  # grouped scales: shape stored in the entry
                if not (isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)):
                    raise BundleError(f"{CONFIG_FILE}: layer {name!r} {granularity} activation quantizer needs a "
                                      f"'shape' list of positive ints, got {shape!r}")
                ones = torch.ones(shape, device=quantizer.scale.device)
                quantizer.set_params(ones, ones * 0, granularity)
            else:
                quantizer.granularity = granularity
        quantizer.calibrated = True
        if act.get("offset") != offset:
            raise BundleError(f"{CONFIG_FILE}: layer {name!r} activation parameters start at {act.get('offset')!r},"
                              f" expected {offset}")
        for local, reference in quantizer.state_dict().items():
            numel = reference.numel()
            if offset + numel > act_params.numel():
                raise BundleError(f"tensor {_ACTIVATIONS!r} has {act_params.numel()} values, too few for layer "
                                  f"{name!r}")
            _assign(quantizer, local, act_params[offset:offset + numel].reshape(reference.shape).clone())
            offset += numel
    return offset


def load_quantized(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the quantized model saved by :func:`save_bundle` in folder ``path`` (eval mode, on ``device``).

    Raises :class:`BundleError` for a missing file or tensor, an unknown format version, a tensor of the wrong
    shape or dtype, an unexpected tensor and per-layer settings that do not fit the architecture.

    The rebuilt model is frozen at the stored bit-widths: its activation quantizers keep no calibration sample,
    so changing bit-widths (``set_bits_``) on it needs a new calibration (``quant.calibrate.calibrate_``).
    """
    from .models import ModelLoadError, build_model

    directory = Path(path)
    config = _read_config(directory)
    spec, recipe = config["model"], config["recipe"]
    try:
        if isinstance(spec.get("arch"), str):
            model = build_model(spec["arch"], spec.get("timm_kwargs") or {})
        else:
            model = build_model(spec["name"], spec.get("arch_kwargs") or {})
        wrap_model_(model, softmax=recipe["softmax"], minmax=bool(recipe["minmax"]),
                    target=config.get("target", "sim"), block_size=config.get("block_size", 32))
    except (ModelLoadError, KeyError, ValueError) as exc:
        raise BundleError(f"{CONFIG_FILE}: cannot rebuild model {spec.get('name')!r}: {exc}") from exc
    tensors = _read_tensors(directory / MODEL_FILE)
    layers = quant_layers(model)
    unknown = [name for name in config["layers"] if name not in layers]
    if unknown:
        raise BundleError(f"{CONFIG_FILE} names layers {unknown[:3]} that the architecture does not have")
    act_params = _take(tensors, _ACTIVATIONS)
    if act_params.dim() != 1 or act_params.dtype != torch.float32:
        raise BundleError(f"tensor {_ACTIVATIONS!r} must be 1-D float32, got {act_params.dtype} of shape "
                          f"{tuple(act_params.shape)}")
    offset = 0
    for name, layer in layers.items():
        if name not in config["layers"]:
            raise BundleError(f"{CONFIG_FILE} has no entry for quantization layer {name!r}")
        if layer.has_weight and getattr(layer, "bias", None) is None and f"{name}.bias" in tensors:
            # reparameterization folded a LayerNorm shift into a layer built without bias (Swin's reduction)
            layer.bias = nn.Parameter(layer.weight.new_zeros(layer.weight.shape[0]))
        offset = _configure_layer(model, name, layer, config["layers"][name], tensors, act_params, offset)
    if offset != act_params.numel():
        raise BundleError(f"tensor {_ACTIVATIONS!r} has {act_params.numel()} values, the layers use {offset}")
    reference = model.state_dict()
    stored_elsewhere = {f"{name}.weight_quantizer.{p}" for name, layer in layers.items() if layer.has_weight
                        for p in ("scale", "zero_point")}
    stored_elsewhere |= {f"{name}.weight" for name, layer in layers.items()
                         if layer.has_weight and layer.weight_quantizer.active}
    stored_elsewhere |= {f"{module}.{local}" for module, quantizer in model.named_modules()
                         if isinstance(quantizer, ActivationQuantizer) for local in quantizer.state_dict()}
    for key in reference:
        if key in stored_elsewhere:
            continue
        tensor = _take(tensors, key)
        _check(tensor, key, tuple(reference[key].shape), reference[key].dtype)
        _assign(model, key, tensor)
    if tensors:
        raise BundleError(f"{MODEL_FILE} has {len(tensors)} tensors the rebuilt model does not use, "
                          f"e.g. {sorted(tensors)[:3]}")
    return model.to(device).eval()


# ---- sizes -----------------------------------------------------------------------------------------------
def bundle_sizes(path: str | Path) -> dict[str, int | float]:
    """Actual vs theoretical bytes of a bundle's ``model.safetensors``.

    ``theoretical_bytes``: the information stored, at its exact width: each packed weight at ``numel * bits / 8``
    bytes, each zero point at ``bits / 8`` bytes, every other tensor (scales, float tensors, activation quantizer
    parameters) at its dtype's size. ``actual_bytes``: the file size (safetensors header and the padding of code
    streams to whole groups of 8 codes included). Also ``packed_weight_bytes``, ``header_bytes``,
    ``config_bytes`` (``quant_config.json``) and ``overhead`` = actual / theoretical - 1.
    """
    directory = Path(path)
    config = _read_config(directory)
    with safetensors.safe_open(str(directory / MODEL_FILE), framework="pt") as handle:
        names = handle.keys()
        stored = {key: _nbytes(handle, key) for key in names}
    theoretical = packed = 0.0
    accounted: set[str] = set()
    for name, entry in config["layers"].items():
        weights = entry.get("weights") or {}
        if weights.get("stored") != "packed":
            continue
        numel, bits = int(torch.Size(weights["shape"]).numel()), int(weights["bits"])
        zeros = int(torch.Size(_param_shape(tuple(weights["shape"]), weights.get("block_size"))).numel())
        packed += numel * bits / 8
        theoretical += numel * bits / 8 + zeros * bits / 8
        accounted |= {f"{name}.{_CODES}", f"{name}.{_ZERO}"}
    theoretical += sum(size for key, size in stored.items() if key not in accounted)
    payload = sum(stored.values())
    actual = (directory / MODEL_FILE).stat().st_size
    return {
        "actual_bytes": actual,
        "theoretical_bytes": theoretical,
        "packed_weight_bytes": packed,
        "header_bytes": actual - payload,
        "config_bytes": (directory / CONFIG_FILE).stat().st_size,
        "overhead": actual / theoretical - 1 if theoretical else 0.0,
    }


def _nbytes(handle, key: str) -> int:
    tensor_slice = handle.get_slice(key)
    numel = int(torch.Size(tensor_slice.get_shape()).numel())
    itemsize = {"U8": 1, "I8": 1, "BOOL": 1, "F16": 2, "BF16": 2, "I16": 2, "F32": 4, "I32": 4, "F64": 8,
                "I64": 8}[tensor_slice.get_dtype()]
    return numel * itemsize
