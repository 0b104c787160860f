"""Writing a bundle: the layers' params as packed codes plus named tensors, and the quantization map."""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import timm
import torch
from torch import nn

from ..modules import QuantLayer
from ..packing import PACKING, pack_codes
from ..quantizers import WeightParams, fake_quant_weight, weight_codes
from ..quantizers.serialize import to_record
from ..quantizers.weight import dequantize_codes
from ..wrap import model_target, quant_layers
from .format import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, CONFIG_FILE, MODEL_FILE, REPORT_FILE, BundleError

__all__ = ["save_bundle"]


def _packed_weight(name: str, layer: QuantLayer, params: WeightParams) -> tuple[dict[str, torch.Tensor], dict]:
    """The three tensors of a quantized weight and its map entry; checks they reproduce the layer exactly."""
    weight = layer.weight.detach()
    bits = int(params.bits)
    qmax = 2**bits - 1
    zero = params.zero_point.detach()
    if not torch.equal(zero, zero.round()) or float(zero.min()) < 0 or float(zero.max()) > qmax:
        raise BundleError(f"layer {name!r}: weight zero points must be integers in [0, {qmax}]")
    with torch.no_grad():
        codes = weight_codes(weight, params)
        if not torch.equal(dequantize_codes(codes, params), fake_quant_weight(weight, params)):
            raise BundleError(f"layer {name!r}: the weight params do not compute (codes - zero) * scale; they "
                              "cannot be stored as integer codes")
    tensors = {
        f"{name}.weight.codes": pack_codes(codes, bits),
        f"{name}.weight.scale": params.scale.detach().contiguous().cpu(),
        f"{name}.weight.zero_point": pack_codes(zero, bits),
    }
    meta, _ = to_record(params)
    meta.pop("codes", None)
    meta.update(shape=list(weight.shape), dtype=str(weight.dtype).removeprefix("torch."))
    return tensors, meta


def _contents(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    entries: dict[str, dict] = {}
    for name, layer in quant_layers(model).items():
        params = layer.params
        entry: dict = {"component": layer.component, "wbits": layer.wbits, "abits": layer.abits}
        if layer.target != "sim":
            entry["form"] = layer.form.name
        entry["weight"] = None
        if params.weight is not None:
            if not isinstance(params.weight, WeightParams):
                raise BundleError(f"layer {name!r} runs with training params ({type(params.weight).__name__}); "
                                  "finish reconstruction before saving")
            packed, entry["weight"] = _packed_weight(name, layer, params.weight)
            tensors.update(packed)
            skip.add(f"{name}.weight")
        entry["inputs"] = []
        for operand, p in enumerate(params.inputs):
            if p is None:
                entry["inputs"].append(None)
                continue
            try:
                meta, values = to_record(p)
            except TypeError as exc:
                raise BundleError(f"layer {name!r} input {operand}: {exc}") from exc
            entry["inputs"].append(meta)
            tensors.update({f"{name}.inputs.{operand}.{k}": v.float() for k, v in values.items()})
        entries[name] = entry
    for key, value in model.state_dict().items():
        if key not in skip:
            tensors[key] = value.detach().contiguous().cpu()
    return tensors, entries


def _model_entry(model_spec: dict) -> dict:
    """``name``/``arch_kwargs`` as given plus the resolved timm ``arch``/``timm_kwargs`` the bundle is rebuilt from
    (so a bundle of a built-in model loads without the built-in's shipped weights or its current definition)."""
    from ..models import ModelLoadError, model_info

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


def save_bundle(model: nn.Module, directory: str | Path, *, model_spec: dict, recipe: dict,
                report: dict | None = None) -> Path:
    """Write ``model`` (wrapped, running with the params to ship) as a bundle into ``directory``; returns it.

    model_spec: ``{"name", "arch_kwargs"}`` as given to ``quant.models.build_model`` (other keys are ignored: the
    bundle holds every weight). recipe: ``{"softmax", "minmax"}`` (recorded). Raises :class:`BundleError` when a
    layer's params cannot be stored as packed integer codes or the model name is unknown; nothing is written then.
    """
    from ..version import __version__

    directory = Path(directory)
    tensors, layers = _contents(model)
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
