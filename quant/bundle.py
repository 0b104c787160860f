"""The quantized-model bundle: ``model.safetensors`` + ``quant_config.json`` + ``report.json``.

``save_bundle`` stores the wrapped model's full state (reparameterized float weights, per-channel weight
scales and zero points, activation quantizer parameters incl. TanQ ``a`` and log2 scale) and the per-layer
settings; ``load_quantized`` rebuilds the architecture, wraps it identically and loads that state, so the
rebuilt model reproduces the job's logits exactly on the same device.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import timm
import torch
from torch import nn

from . import __version__
from .modules import QuantLayer
from .wrap import quant_layers, wrap_model_

__all__ = ["BUNDLE_FORMAT_VERSION", "BundleError", "load_quantized", "save_bundle"]

BUNDLE_FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, REPORT_FILE = "model.safetensors", "quant_config.json", "report.json"


class BundleError(ValueError):
    """A bundle folder that cannot be loaded (missing file or tensor, wrong version, shape mismatch)."""


def save_bundle(
    model: nn.Module,
    directory: str | Path,
    *,
    model_spec: dict,
    recipe: dict,
    report: dict | None = None,
) -> Path:
    """Write ``model`` (a wrapped, calibrated model) as a bundle into ``directory`` and return the folder.

    model_spec: ``{"name", "arch_kwargs"}`` as given to ``quant.models.build_model``.
    recipe: ``{"softmax", "minmax"}`` as given to ``wrap_model_``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(directory / MODEL_FILE), metadata={"format": "mpq-bundle"})
    layers = quant_layers(model)
    config = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "model": {"name": model_spec["name"], "arch_kwargs": dict(model_spec.get("arch_kwargs") or {})},
        "recipe": {"softmax": recipe["softmax"], "minmax": bool(recipe["minmax"])},
        "bits": {name: [layer.wbits, layer.abits] for name, layer in layers.items()},
        "enabled": {name: _enabled(layer) for name, layer in layers.items()},
        "layers": {name: layer.describe() for name, layer in layers.items()},
        "versions": {"mpq": __version__, "torch": torch.__version__, "timm": timm.__version__},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (directory / REPORT_FILE).write_text(json.dumps(report or {}, indent=2, default=str))
    return directory


def _enabled(layer: QuantLayer) -> list[bool]:
    flags = [q.enabled for q in layer.activation_quantizers()]
    return ([layer.weight_quantizer.enabled] if layer.has_weight else [True]) + flags


def _read_config(directory: Path) -> dict:
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"bundle {directory} is missing {name}")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    version = config.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format_version {version!r}; this mpq reads {BUNDLE_FORMAT_VERSION}")
    return config


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._parameters:
        current = module._parameters[attr]
        requires_grad = bool(current.requires_grad) if current is not None else True
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=requires_grad)
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise BundleError(f"model.safetensors has tensor {key!r} that the rebuilt model does not have")


def load_quantized(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the quantized model saved by ``save_bundle`` in folder ``path`` (eval mode, on ``device``)."""
    from .models import build_model

    directory = Path(path)
    config = _read_config(directory)
    model = build_model(config["model"]["name"], config["model"].get("arch_kwargs") or {})
    wrap_model_(model, softmax=config["recipe"]["softmax"], minmax=config["recipe"]["minmax"])
    tensors = safetensors.torch.load_file(str(directory / MODEL_FILE))
    expected = set(model.state_dict())
    missing = sorted(expected - set(tensors))
    if missing:
        raise BundleError(f"model.safetensors is missing {len(missing)} tensors, e.g. {missing[:3]}")
    reference = model.state_dict()
    for key, tensor in tensors.items():
        ref = reference.get(key)
        if ref is not None and ref.shape != tensor.shape and not key.endswith(("scale", "zero_point")):
            raise BundleError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(ref.shape)}")
        _assign(model, key, tensor)
    layers = quant_layers(model)
    for name, (wbits, abits) in config["bits"].items():
        if name not in layers:
            raise BundleError(f"quant_config.json names layer {name!r} that the architecture does not have")
        layer = layers[name]
        flags = config.get("enabled", {}).get(name)
        if layer.has_weight:
            layer.weight_quantizer.bits = int(wbits)
            layer.weight_quantizer.calibrated = True
            if flags:
                layer.weight_quantizer.enabled = bool(flags[0])
        for index, quantizer in enumerate(layer.activation_quantizers()):
            quantizer.bits = int(abits)
            quantizer.calibrated = True
            if flags:
                quantizer.enabled = bool(flags[index + 1])
    return model.to(device).eval()
