"""Cheap checks of a :class:`~quant.config.PipelineConfig`, run before a job is accepted (well under a second).

Nothing here builds a real model, loads a tensor or decodes an image:

- the architecture is built once on the ``meta`` device (no memory, no initialisation) and its state-dict shapes
  and per-layer cost profile are cached per ``(name, arch_kwargs)``;
- uploaded weights are checked against those shapes from the safetensors header only;
- data sources are described from their header, a folder listing or the built-in split sizes
  (:func:`quant.data.describe_source`);
- bit-widths and budget feasibility are checked on the cached profile.

What only the bytes can show (NaN/inf weights, undecodable images) is checked when the run loads them, in its
first stage (:func:`check_finite_weights`). Messages never contain a file's directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .config import ALLOWED_ABITS, ALLOWED_WBITS, PipelineConfig
from .data import DataLoadError, SourceInfo, describe_source
from .errors import PipelineInputError
from .layer_costs import LayerProfile, profile_layers
from .models import BUILTIN_MODELS, BUILTIN_PREFIX, ModelLoadError, builtin_spec, model_info
from .wrap import component_of

__all__ = [
    "ArchInfo",
    "architecture",
    "calibration_warning",
    "check_bits",
    "check_finite_weights",
    "check_synthesizable",
    "check_weights_header",
    "synthetic_warnings",
    "validate_config",
]

_MAX_LISTED = 5
_FLOAT_HEADER_DTYPES = ("F32", "F16", "BF16", "F64", "F8_E5M2", "F8_E4M3")


@dataclass(frozen=True)
class ArchInfo:
    """What validation needs to know of an architecture, found without building real weights.

    input_shape: ``(C, H, W)`` in pixels; state: ``{state-dict key: (shape, is_float)}``;
    profiles: per quantization layer costs for one image (see :func:`quant.layer_costs.profile_layers`).
    """

    arch: str
    input_shape: tuple[int, int, int]
    state: dict[str, tuple[tuple[int, ...], bool]]
    profiles: dict[str, LayerProfile]


def _meta_model(arch: str, kwargs: dict, device: str = "meta") -> nn.Module:
    import timm

    try:
        with torch.device(device):
            return timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as exc:
        raise PipelineInputError(
            "invalid_arch_kwargs",
            f"arch_kwargs {sorted(kwargs)} do not fit {arch!r}: {exc}; pass only keyword arguments of "
            f"timm.create_model({arch!r}) such as img_size, depth, num_heads, num_classes",
            {"arch_kwargs": sorted(kwargs)},
        ) from exc
    except (ValueError, AssertionError, RuntimeError, KeyError, NotImplementedError, IndexError) as exc:
        raise PipelineInputError(
            "invalid_arch_kwargs",
            f"cannot build {arch!r} with arch_kwargs {kwargs}: {type(exc).__name__}: {exc}",
            {"arch_kwargs": sorted(kwargs)},
        ) from exc


@lru_cache(maxsize=64)
def _architecture(name: str, kwargs_json: str) -> ArchInfo:
    from .wrap import wrap_model_

    kwargs = json.loads(kwargs_json)
    try:
        info = model_info(name, kwargs)
    except ModelLoadError as exc:
        raise PipelineInputError("invalid_arch_kwargs", str(exc)) from exc
    arch = info["arch"]
    build_kwargs = builtin_spec(name)["arch_kwargs"] if name.startswith(BUILTIN_PREFIX) else info["arch_kwargs"]
    model = _meta_model(arch, dict(build_kwargs))
    state = {key: (tuple(value.shape), value.is_floating_point()) for key, value in model.state_dict().items()}
    input_shape = tuple(int(v) for v in info["input_size"])
    try:
        try:
            profiles = profile_layers(wrap_model_(model), input_shape)
        except (RuntimeError, NotImplementedError):  # an op without a meta kernel: profile a real CPU model once
            cpu_model = _meta_model(arch, dict(build_kwargs), device="cpu")
            profiles = profile_layers(wrap_model_(cpu_model), input_shape)
    except (RuntimeError, ValueError, AssertionError, NotImplementedError) as exc:
        raise PipelineInputError(
            "invalid_arch_kwargs",
            f"{arch!r} with arch_kwargs {info['arch_kwargs']} does not run on a {list(input_shape)} input: "
            f"{type(exc).__name__}: {exc}",
        ) from exc
    return ArchInfo(arch=arch, input_shape=input_shape, state=state, profiles=profiles)  # type: ignore[arg-type]


def architecture(name: str, arch_kwargs: dict | None = None) -> ArchInfo:
    """The (cached) :class:`ArchInfo` of a model name; ``PipelineInputError`` with what to fix.

    Codes: ``unknown_architecture`` (no such built-in or timm model), ``invalid_arch_kwargs`` (a keyword the
    architecture does not take, a forbidden one such as ``pretrained``, or values it cannot be built with).
    """
    if name.startswith(BUILTIN_PREFIX):
        if name.removeprefix(BUILTIN_PREFIX) not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
            raise PipelineInputError("unknown_architecture", f"unknown built-in model {name!r}; built-ins are {known}")
    else:
        import timm

        if not timm.is_model(name):
            raise PipelineInputError(
                "unknown_architecture",
                f"unknown architecture {name!r}; use builtin:vit-digits, builtin:swin-digits or a timm model name "
                "such as vit_small_patch16_224",
            )
    if not isinstance(arch_kwargs, dict) or not all(isinstance(key, str) for key in arch_kwargs):
        raise PipelineInputError("invalid_arch_kwargs", "arch_kwargs must be an object with string keys")
    try:
        kwargs_json = json.dumps(arch_kwargs, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise PipelineInputError("invalid_arch_kwargs", f"arch_kwargs must be JSON values: {exc}") from exc
    return _architecture(name, kwargs_json)


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_weights_header(path: str | Path, info: ArchInfo) -> None:
    """Compare a safetensors file's keys, shapes and dtypes (header only) with the architecture's state dict.

    Raises ``PipelineInputError("invalid_weights")`` naming the missing, unexpected and mismatched keys.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {key: (handle.get_slice(key).get_dtype(), tuple(handle.get_slice(key).get_shape()))
                      for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:
        raise PipelineInputError(
            "invalid_weights", f"the weights are not a readable safetensors file ({type(exc).__name__})"
        ) from exc
    missing = [key for key in info.state if key not in header]
    unexpected = [key for key in header if key not in info.state]
    mismatched = [
        f"{key}: file {list(header[key][1])} vs model {list(shape)}"
        for key, (shape, _is_float) in info.state.items()
        if key in header and header[key][1] != shape
    ]
    not_float = [key for key, (_shape, is_float) in info.state.items()
                 if is_float and key in header and header[key][0] not in _FLOAT_HEADER_DTYPES]
    parts = [f"{len(keys)} {label}: {_listed(keys)}" for label, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
        ("non-float tensors for float parameters", not_float)) if keys]
    if parts:
        hint = ""
        if unexpected and all(key.startswith("module.") for key in unexpected):
            hint = "; strip the 'module.' prefix (DataParallel) from the keys"
        raise PipelineInputError(
            "invalid_weights",
            f"the weights do not fit {info.arch!r} with these arch_kwargs: {'; '.join(parts)}{hint}",
            {"missing": len(missing), "unexpected": len(unexpected), "mismatched": len(mismatched)},
        )


def check_finite_weights(model: nn.Module) -> None:
    """``PipelineInputError("nonfinite_weights")`` when a floating-point parameter or buffer holds NaN or inf."""
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise PipelineInputError(
            "nonfinite_weights",
            f"the weights contain NaN or infinite values in {len(bad)} tensors ({_listed(bad)}); "
            "fix the checkpoint before quantizing it",
            {"tensors": bad[:50]},
        )


def check_bits(config: PipelineConfig, layer_names: list[str]) -> None:
    """Candidate, head and fixed-layer bit-widths allowed, fixed layers existing and, for a deployment target,
    each fixed pair a form the target executes for that layer's kind; ``PipelineInputError``."""
    method = config.method
    for bits in method.candidate_wbits:
        if bits not in ALLOWED_WBITS:
            raise PipelineInputError("invalid_bits", f"candidate weight bits {bits} not in {ALLOWED_WBITS}")
    for bits in method.candidate_abits:
        if bits not in ALLOWED_ABITS:
            raise PipelineInputError("invalid_bits", f"candidate activation bits {bits} not in {ALLOWED_ABITS}")
    if method.head_bits is not None and method.head_bits not in ALLOWED_WBITS:
        raise PipelineInputError("invalid_bits", f"head_bits {method.head_bits} not in {ALLOWED_WBITS}")
    for name, (wbits, abits) in method.fixed_layers.items():
        if name not in layer_names:
            raise PipelineInputError(
                "unknown_layer", f"fixed layer {name!r} does not exist; layers are e.g. {layer_names[:4]}"
            )
        if wbits not in ALLOWED_WBITS or abits not in ALLOWED_ABITS:
            raise PipelineInputError("invalid_bits", f"fixed layer {name!r}: bits ({wbits}, {abits}) not allowed")
        if method.target != "sim":
            _check_form(method.target, name, component_of(name), wbits, abits)


def _check_form(target: str, name: str, component: str, wbits: int, abits: int) -> None:
    """``PipelineInputError("invalid_bits")`` when ``target`` has no form ``(wbits, abits)`` for the layer."""
    from .target import FormError, form_for_bits, forms_for

    try:
        form_for_bits(target, component, wbits, abits)
    except FormError:
        listed = ", ".join(f"[{f.wbits}, {f.abits}] ({f.name})" for f in forms_for(target, component))
        raise PipelineInputError(
            "invalid_bits",
            f"fixed layer {name!r} is a {component} layer that {target} cannot run at [{wbits}, {abits}]; "
            f"give it one of {listed}",
            {"layer": name, "component": component, "allowed": [[f.wbits, f.abits] for f in forms_for(target, component)]},
        ) from None


def _describe(source: str, split: str, config: PipelineConfig, label: str, input_shape) -> SourceInfo:
    try:
        info = describe_source(source, split=split, model_name=config.model.name,
                               arch_kwargs=dict(config.model.arch_kwargs))
    except (DataLoadError, ModelLoadError) as exc:
        raise PipelineInputError("invalid_data", f"{label} data: {exc}") from exc
    if info.image_shape is not None and tuple(info.image_shape) != tuple(input_shape):
        raise PipelineInputError(
            "invalid_data",
            f"{label} images have shape {list(info.image_shape)} per image but the model expects "
            f"{list(input_shape)} (C, H, W); resize the images or set img_size in arch_kwargs",
        )
    return info


def validate_config(config: PipelineConfig) -> list[dict[str, str]]:
    """Every check that needs no weights loaded and no image decoded; returns warnings ``[{"code", "message"}]``.

    Raises ``PipelineInputError`` (codes ``unknown_architecture``, ``invalid_arch_kwargs``, ``missing_weights``,
    ``invalid_weights``, ``invalid_data``, ``invalid_bits``, ``unknown_layer``, ``infeasible_budget``,
    ``invalid_budget``) with a message that says what to fix.
    """
    spec = config.model
    info = architecture(spec.name, dict(spec.arch_kwargs))
    if config.data.is_synthetic:  # data-free: the generator needs attention blocks to read patch tokens from
        builtin = spec.name.startswith(BUILTIN_PREFIX)
        check_synthesizable(info.arch, dict(builtin_spec(spec.name)["arch_kwargs"] if builtin else spec.arch_kwargs))
    if spec.name.startswith(BUILTIN_PREFIX):
        if spec.weights_path is not None:
            raise PipelineInputError(
                "invalid_weights",
                f"built-in model {spec.name!r} ships its own weights; give no weights (to use your own, name the "
                f"timm architecture {info.arch!r})",
            )
    elif spec.weights_path is None:
        raise PipelineInputError("missing_weights", f"model {spec.name!r} needs weights (a safetensors file)")
    else:
        check_weights_header(spec.weights_path, info)
    if config.data.is_synthetic:
        calib = SourceInfo(count=config.data.num_calibration, image_shape=info.input_shape, labelled=True)
    else:
        calib = _describe(config.data.source, "calib", config, "calibration", info.input_shape)
    if config.data.eval_source is not None:
        _describe(config.data.eval_source, "test", config, "evaluation", info.input_shape)
    check_bits(config, list(info.profiles))
    if config.method.budgets:
        from .allocation import check_budgets_feasible

        check_budgets_feasible(info.profiles, config.method)
    warnings = synthetic_warnings(config)
    if config.data.num_calibration > calib.count:
        warnings.append({"code": "calibration_images_capped",
                         "message": calibration_warning(config.data.num_calibration, calib.count)})
    return warnings


def check_synthesizable(arch: str, arch_kwargs: dict) -> None:
    """``NoAttentionBlocksError`` (code ``no_attention_blocks``) when ``arch`` has no attention blocks whose patch
    tokens ``quant.synthetic`` could read (built on the ``meta`` device: no memory, no weights)."""
    from .synthetic.hooks import NoAttentionBlocksError, token_sites

    try:
        token_sites(_meta_model(arch, arch_kwargs))
    except NoAttentionBlocksError:
        raise NoAttentionBlocksError(repr(arch)) from None


def synthetic_warnings(config: PipelineConfig) -> list[dict[str, str]]:
    """``[{"code": "synthetic_reconstruction", ...}]`` for a data-free job with block reconstruction: measured on
    both built-ins, FIMA-Q on synthetic images gave a higher KL than PTQ alone (docs/data-free.md)."""
    if not config.data.is_synthetic or config.method.reconstruct == "none":
        return []
    return [{"code": "synthetic_reconstruction",
             "message": f"reconstruction ({config.method.reconstruct}) fits the model to the synthetic images; "
                        "on the built-in ViT and Swin it raised the KL to float instead of lowering it "
                        "(docs/data-free.md); set method.reconstruct to 'none' or give real calibration images"}]


def calibration_warning(requested: int, available: int) -> str:
    """The warning text when ``num_calibration`` asks for more images than the data holds."""
    return (f"num_calibration is {requested} but the calibration data holds {available} images; "
            f"all {available} are used")
