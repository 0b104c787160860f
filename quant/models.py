"""Build float timm models by name: the built-in digits models or any timm architecture with user weights.

A model name is either ``builtin:NAME`` (see :data:`BUILTIN_MODELS`; architecture, keyword arguments,
normalisation, float test accuracy and weights checksum come from ``quant/builtin/assets/models.json``,
written by ``python scripts/train_builtin.py``) or a timm architecture name such as ``vit_small_patch16_224`` or
``swin_tiny_patch4_window7_224``, created with ``pretrained=False`` plus the caller's keyword overrides
(``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``num_classes``...).

Weights are read from safetensors files only (never ``torch.load``/unpickling) and loaded strictly. The
built-in models:

- ``vit-digits``: ``vit_tiny_patch16_224`` with img_size 32, patch_size 4 (8x8 patches + class token),
  embed_dim 96, depth 6, num_heads 3, classification from the class token (``global_pool='token'``).
- ``swin-digits``: ``swin_tiny_patch4_window7_224`` with img_size 32, patch_size 2, window_size 4,
  embed_dim 48, depths (2, 2, 2), num_heads (3, 6, 12); stage resolutions 16, 8, 4 are multiples of the window
  (no padding), average-pooled head.

Failures raise :class:`ModelLoadError` (a ``ValueError``) whose message says what went wrong and how to fix
it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from quant.builtin import ASSETS_DIR

__all__ = ["BUILTIN_MODELS", "BUILTIN_PREFIX", "ModelLoadError", "build_model", "builtin_spec", "model_info"]

#: Names of the built-in models; pass them to :func:`build_model` as ``builtin:NAME``.
BUILTIN_MODELS: tuple[str, ...] = ("vit-digits", "swin-digits")
#: Prefix that marks a built-in model name.
BUILTIN_PREFIX = "builtin:"

_ASSETS = ASSETS_DIR
_MODELS_JSON = _ASSETS / "models.json"
#: Keyword arguments that would make timm download or unpickle weights, or change what the model returns.
_FORBIDDEN_KWARGS = (
    "pretrained",
    "checkpoint_path",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "features_only",
)
_MAX_LISTED = 5


class ModelLoadError(ValueError):
    """A model could not be built or its weights could not be loaded; the message says what to fix."""


@lru_cache(maxsize=1)
def _builtin_table() -> dict[str, dict[str, Any]]:
    try:
        table = json.loads(_MODELS_JSON.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"cannot read the built-in model table {str(_MODELS_JSON)!r} ({exc}); "
            "re-install mpq or re-run python scripts/train_builtin.py"
        ) from exc
    return table


def builtin_spec(name: str) -> dict[str, Any]:
    """The ``models.json`` entry of a built-in model (``NAME`` or ``builtin:NAME``), as a fresh dict.

    Keys: ``arch``, ``arch_kwargs``, ``input_size`` [3, H, W], ``mean``/``std`` (3 floats each, applied to
    pixels in [0, 1]), ``interpolation``, ``crop_pct``, ``crop_mode``, ``num_classes``, ``dataset``,
    ``float_test_top1`` (percent on the ``builtin:digits`` test split), ``weights`` (file name), ``sha256``,
    ``size_bytes`` and ``training`` (the recipe and run time).
    """
    short = name.removeprefix(BUILTIN_PREFIX)
    if short not in BUILTIN_MODELS:
        choices = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
        raise ModelLoadError(f"unknown built-in model {BUILTIN_PREFIX + short!r}; choose one of {choices}")
    table = _builtin_table()
    if short not in table:
        raise ModelLoadError(
            f"built-in model {short!r} is missing from {str(_MODELS_JSON)!r}; "
            f"run python scripts/train_builtin.py --model {short}"
        )
    return json.loads(json.dumps(table[short]))


def _check_arch_kwargs(arch_kwargs: dict | None) -> dict[str, Any]:
    if arch_kwargs is None:
        return {}
    if not isinstance(arch_kwargs, dict) or not all(isinstance(k, str) for k in arch_kwargs):
        raise ModelLoadError(f"arch_kwargs must be a dict with string keys; got {arch_kwargs!r}")
    forbidden = sorted(k for k in arch_kwargs if k in _FORBIDDEN_KWARGS)
    if forbidden:
        raise ModelLoadError(
            f"arch_kwargs may not contain {forbidden}: pretrained weights are never downloaded and "
            "checkpoints are read only from a safetensors weights file (pass weights_path)"
        )
    return dict(arch_kwargs)


def _check_timm_arch(arch: str) -> None:
    import timm

    if not isinstance(arch, str) or not arch or not timm.is_model(arch):
        hint = ""
        if isinstance(arch, str) and arch:
            close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelLoadError(
            f"unknown architecture {arch!r}; {hint}use a timm architecture name (timm.list_models()) "
            f"or one of {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}"
        )


def _builtin_kwargs(name: str, arch_kwargs: dict | None) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = builtin_spec(name)
    overrides = _check_arch_kwargs(arch_kwargs)
    conflicts = {k: v for k, v in overrides.items() if spec["arch_kwargs"].get(k, _MISSING) != _json_like(v)}
    if conflicts:
        raise ModelLoadError(
            f"built-in model {name!r} has a fixed architecture; arch_kwargs {conflicts} differ from its "
            f"{spec['arch_kwargs']} (leave arch_kwargs empty, or use the timm name {spec['arch']!r} "
            "with your own weights)"
        )
    return spec, spec["arch_kwargs"]


_MISSING = object()


def _json_like(value: Any) -> Any:
    """Tuples become lists so a caller's ``depths=(2, 2, 2)`` equals the stored ``[2, 2, 2]``."""
    return json.loads(json.dumps(value)) if isinstance(value, (tuple, list)) else value


def _create(arch: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot build {arch!r} with arch_kwargs {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {str(path)!r}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(path)!r} is not a safetensors file ({exc}); pickled checkpoints (.pt/.pth/.bin) are not "
            "accepted: convert with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        ) from exc


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    not_float = [
        k
        for k, v in state.items()
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point()
    ]
    if missing or unexpected or mismatched or not_float:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
            ("non-float tensors for float parameters", not_float),
        ):
            if keys:
                more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:_MAX_LISTED])}{more}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = "; strip the 'module.' prefix (DataParallel) from the keys"
        raise ModelLoadError(
            f"weights {str(path)!r} do not fit {arch!r} with these arch_kwargs: {'; '.join(parts)}{hint}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model(
    name: str, arch_kwargs: dict | None = None, weights_path: str | Path | None = None
) -> torch.nn.Module:
    """Create a float model and load its weights.

    Args:
        name: ``builtin:NAME`` (one of :data:`BUILTIN_MODELS`) or a timm architecture name
            (``timm.list_models()``; a pretrained tag such as ``.augreg_in21k`` is accepted but only sets
            timm's default config, nothing is downloaded).
        arch_kwargs: keyword overrides passed to ``timm.create_model`` (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``num_classes``...). For built-ins only values equal to
            the built-in's own are accepted. ``pretrained``/``checkpoint_path`` are refused.
        weights_path: safetensors file holding the model's ``state_dict``, loaded strictly (every key, every
            shape). Built-ins use their shipped, checksum-verified weights and refuse a weights_path.
            For a timm name without weights_path the model keeps timm's random initialisation (for tests).

    Returns:
        The model in eval mode, float32, on CPU.
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string; got {name!r}")
    if name.startswith(BUILTIN_PREFIX):
        if weights_path is not None:
            raise ModelLoadError(
                f"built-in model {name!r} ships its own weights; weights_path must be None "
                f"(to use your own weights, pass the timm name {builtin_spec(name)['arch']!r})"
            )
        spec, kwargs = _builtin_kwargs(name, arch_kwargs)
        path = _ASSETS / spec["weights"]
        if not path.is_file():
            raise ModelLoadError(f"built-in weights {str(path)!r} are missing; re-install mpq")
        if _sha256(path) != spec["sha256"]:
            raise ModelLoadError(
                f"built-in weights {str(path)!r} do not match the sha256 in models.json; the file is corrupt "
                "or stale: re-install mpq or re-run python scripts/train_builtin.py "
                f"--model {name.removeprefix(BUILTIN_PREFIX)}"
            )
        arch = spec["arch"]
    else:
        _check_timm_arch(name)
        kwargs = _check_arch_kwargs(arch_kwargs)
        arch = name
        path = None if weights_path is None else Path(weights_path)
    state = None if path is None else _read_weights(path)
    model = _create(arch, kwargs)
    if state is not None and path is not None:
        _load_state(model, state, arch, path)
    return model.to(device="cpu", dtype=torch.float32).eval()


def model_info(name: str, arch_kwargs: dict | None = None) -> dict[str, Any]:
    """Describe a model's input without building it.

    Returns:
        dict with ``name`` (as given), ``arch`` (timm architecture name), ``arch_kwargs`` (dict),
        ``input_size`` (tuple ``(C, H, W)``, pixels), ``mean``/``std`` (tuples of C floats, pixels in [0, 1]),
        ``interpolation`` (str), ``crop_pct`` (float), ``crop_mode`` (str) and ``num_classes`` (int or None).
        Built-ins take these from ``models.json`` (plus ``float_test_top1``, percent); timm names from
        ``timm.data.resolve_data_config`` on the architecture's default config, with ``input_size`` following
        ``img_size``/``in_chans`` overrides.
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string; got {name!r}")
    if name.startswith(BUILTIN_PREFIX):
        spec, kwargs = _builtin_kwargs(name, arch_kwargs)
        return {
            "name": name,
            "arch": spec["arch"],
            "arch_kwargs": kwargs,
            "input_size": tuple(spec["input_size"]),
            "mean": tuple(spec["mean"]),
            "std": tuple(spec["std"]),
            "interpolation": spec["interpolation"],
            "crop_pct": spec["crop_pct"],
            "crop_mode": spec["crop_mode"],
            "num_classes": spec["num_classes"],
            "float_test_top1": spec["float_test_top1"],
        }
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    _check_timm_arch(name)
    kwargs = _check_arch_kwargs(arch_kwargs)
    cfg = get_pretrained_cfg(name)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    data = resolve_data_config({}, pretrained_cfg=cfg_dict)
    channels, height, width = data["input_size"]
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = kwargs.get("in_chans", channels)
    return {
        "name": name,
        "arch": name,
        "arch_kwargs": kwargs,
        "input_size": (int(channels), int(height), int(width)),
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
        "interpolation": data["interpolation"],
        "crop_pct": data["crop_pct"],
        "crop_mode": data["crop_mode"],
        "num_classes": kwargs.get("num_classes", cfg_dict.get("num_classes")),
    }
