"""Params records <-> a JSON description plus named tensors (safetensors-ready), with validation on the way back.

``to_record(params)`` returns ``(meta, tensors)``: ``meta`` a JSON-able dict (``kind``, ``bits``, layout or
granularity...), ``tensors`` ``{field: tensor}`` (``scale``, ``zero_point``, ``a``, ``c``, ``codes``). ``from_record``
rebuilds the record and raises ``ValueError`` naming the problem (unknown kind, missing tensor, bad shape...), so a
stored file never turns into a silently wrong quantizer. Tensors are never pickled.
"""

from __future__ import annotations

import torch

from .params import AffineParams, DynamicParams, Log2Params, TanQParams, WeightParams

__all__ = ["RECORD_VERSION", "from_record", "to_record"]

#: Version of the record layout (part of every file that stores records).
RECORD_VERSION = 1

_TENSOR_FIELDS = {
    "uniform": ("scale", "zero_point"),
    "uniform_weight": ("scale", "zero_point"),
    "tanq": ("a", "c"),
    "log2": ("scale",),
    "dynamic": (),
}


def to_record(params) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of one ``AffineParams``/``DynamicParams``/``TanQParams``/``Log2Params``/``WeightParams``
    (tensors detached, contiguous, on the CPU)."""
    kind = getattr(params, "kind", None)
    if kind not in _TENSOR_FIELDS:
        raise TypeError(f"cannot store params of type {type(params).__name__}")
    meta: dict = {"kind": kind, "bits": int(params.bits)}
    if isinstance(params, AffineParams):
        meta["granularity"] = params.granularity
    elif isinstance(params, DynamicParams):
        meta.update(granularity=params.granularity, block_size=params.block_size)
    elif isinstance(params, WeightParams):
        meta.update(layout=params.layout, block_size=params.block_size, codes=params.codes is not None)
    tensors = {name: getattr(params, name) for name in _TENSOR_FIELDS[kind]}
    if isinstance(params, WeightParams) and params.codes is not None:
        tensors["codes"] = params.codes.to(torch.uint8)
    return meta, {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _tensor(tensors: dict[str, torch.Tensor], name: str, where: str) -> torch.Tensor:
    value = tensors.get(name)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where}: missing tensor {name!r}")  # noqa: TRY004 - a stored file's content, not a type
    if name != "codes" and not value.is_floating_point():
        raise ValueError(f"{where}: tensor {name!r} must be floating point, got {value.dtype}")
    return value


def from_record(meta: dict, tensors: dict[str, torch.Tensor], where: str = "params"):
    """The params record ``meta`` describes, with its ``tensors``; ``ValueError`` (naming ``where``) when they do
    not make a valid record."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: expected an object, got {type(meta).__name__}")  # noqa: TRY004 - stored JSON
    kind, bits = meta.get("kind"), meta.get("bits")
    if kind not in _TENSOR_FIELDS:
        raise ValueError(f"{where}: unknown params kind {kind!r}; known kinds are {', '.join(_TENSOR_FIELDS)}")
    values = {name: _tensor(tensors, name, where) for name in _TENSOR_FIELDS[kind]}
    try:
        if kind == "uniform":
            return AffineParams(values["scale"], values["zero_point"], bits, meta.get("granularity", "tensor"))
        if kind == "dynamic":
            return DynamicParams(bits, meta.get("granularity", "token"), meta.get("block_size"))
        if kind == "tanq":
            return TanQParams(values["a"], values["c"], bits)
        if kind == "log2":
            return Log2Params(values["scale"], bits)
        codes = _tensor(tensors, "codes", where) if meta.get("codes") else None
        if codes is not None and codes.dtype != torch.uint8:
            raise ValueError(f"{where}: weight codes must be uint8, got {codes.dtype}")
        return WeightParams(values["scale"], values["zero_point"], bits, meta.get("layout", "channel"),
                            meta.get("block_size"), codes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
