"""Read and check a safetensors header without loading any tensor (and without ever unpickling anything).

The format is an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets"}, "__metadata__": {...}}`` and a byte buffer that the offsets must cover exactly. Everything is
checked here with messages saying what is wrong; the ``safetensors`` library then parses the header as well, so
a file accepted here is one that library accepts.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from service.errors import UnprocessableEntity, UnsupportedMediaType
from service.models import ArtifactKind

__all__ = [
    "DTYPE_SIZES",
    "TensorInfo",
    "check_kind",
    "infer_kind",
    "nonfinite_tensors",
    "read_safetensors_header",
]

#: Element size in bytes of every safetensors dtype accepted.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
INT_DTYPES = ("I64", "I32", "I16", "I8", "U8")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Floating-point dtypes scanned for NaN/inf, and the number of elements read at a time.
_SCANNED_DTYPES = ("F64", "F32", "F16", "BF16")
_SCAN_ELEMENTS = 1 << 22

_NOT_SAFETENSORS = "only safetensors files are accepted (save with safetensors.torch.save_file)"


@dataclass(frozen=True)
class TensorInfo:
    """Name-less description of one stored tensor."""

    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


def _sniff(prefix: bytes) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return "a zip archive (e.g. a torch.save checkpoint, which holds pickles)"
    if prefix[:1] == b"\x80" and prefix[1:2] in {bytes([n]) for n in range(2, 6)}:
        return "a Python pickle"
    return "not a safetensors file"


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of the safetensors file at ``path``; 415 when it is not one, 422 when it is corrupt."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UnsupportedMediaType(
                f"file is too short to be safetensors; {_NOT_SAFETENSORS}", code="not_safetensors"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > min(size - 8, MAX_HEADER_BYTES):
            raise UnsupportedMediaType(
                f"{_sniff(prefix)}; {_NOT_SAFETENSORS}; pickles are never loaded", code="not_safetensors"
            )
        raw = handle.read(header_len)
    if not raw.lstrip().startswith(b"{"):
        raise UnsupportedMediaType(f"{_sniff(prefix)}; {_NOT_SAFETENSORS}", code="not_safetensors")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedMediaType(
            f"safetensors header is not valid JSON ({exc}); {_NOT_SAFETENSORS}", code="not_safetensors"
        ) from exc
    if not isinstance(header, dict):
        raise UnsupportedMediaType(
            f"safetensors header must be a JSON object; {_NOT_SAFETENSORS}", code="not_safetensors"
        )

    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise UnprocessableEntity(
                    "safetensors __metadata__ must be an object", code="invalid_safetensors"
                )
            continue
        if not isinstance(entry, dict):
            raise UnprocessableEntity(
                f"tensor {name!r}: header entry must be an object", code="invalid_safetensors"
            )
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise UnprocessableEntity(
                f"tensor {name!r}: unsupported dtype {dtype!r}",
                code="invalid_safetensors",
                details={"tensor": name, "supported": sorted(DTYPE_SIZES)},
            )
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise UnprocessableEntity(
                f"tensor {name!r}: shape must be a list of non-negative integers", code="invalid_safetensors"
            )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise UnprocessableEntity(
                f"tensor {name!r}: data_offsets must be [begin, end]", code="invalid_safetensors"
            )
        begin, end = offsets
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if not 0 <= begin <= end <= data_len or end - begin != expected:
            raise UnprocessableEntity(
                f"tensor {name!r}: data_offsets {offsets} do not match dtype {dtype} and shape {shape} "
                f"within a {data_len}-byte buffer (file truncated?)",
                code="invalid_safetensors",
            )
        tensors[name] = TensorInfo(dtype=dtype, shape=tuple(shape))
        spans.append((begin, end, name))

    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise UnprocessableEntity(
                f"tensor {name!r}: byte buffer has a hole or overlap at offset {position}",
                code="invalid_safetensors",
            )
        position = end
    if position != data_len:
        raise UnprocessableEntity(
            f"byte buffer has {data_len - position} trailing bytes not covered by any tensor",
            code="invalid_safetensors",
        )
    try:  # second opinion from the reference implementation (reads the header only; tensors stay on disk)
        with safe_open(str(path), framework="numpy") as handle:
            library_keys = set(handle.keys())
    except Exception as exc:
        raise UnprocessableEntity(
            f"safetensors rejected the file: {exc}", code="invalid_safetensors"
        ) from exc
    if library_keys != set(tensors):
        raise UnprocessableEntity(
            "safetensors header lists different tensors than expected", code="invalid_safetensors"
        )
    return tensors


def infer_kind(tensors: dict[str, TensorInfo]) -> ArtifactKind:
    """``images`` when the file holds an ``images`` tensor, else ``weights``."""
    return ArtifactKind.IMAGES if "images" in tensors else ArtifactKind.WEIGHTS


def check_kind(kind: ArtifactKind, tensors: dict[str, TensorInfo]) -> None:
    """Shape and dtype rules of each kind; 422 with what to fix."""
    if not tensors:
        raise UnprocessableEntity("the file holds no tensors", code="invalid_artifact")
    if kind is ArtifactKind.WEIGHTS:
        return
    extra = sorted(set(tensors) - {"images", "labels"})
    if "images" not in tensors:
        raise UnprocessableEntity(
            "an images artifact needs a tensor named 'images' (float32 [N,3,H,W])", code="invalid_images"
        )
    if extra:
        raise UnprocessableEntity(
            f"an images artifact holds only 'images' and 'labels'; unexpected: {extra}",
            code="invalid_images",
            details={"unexpected": extra},
        )
    images = tensors["images"]
    if images.dtype not in FLOAT_DTYPES:
        raise UnprocessableEntity(
            f"'images' must be a float tensor (float32), got {images.dtype}",
            code="invalid_images",
            details={"dtype": images.dtype},
        )
    shape = images.shape
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise UnprocessableEntity(
            f"'images' must have shape [N,3,H,W] with N,H,W >= 1, got {list(shape)}",
            code="invalid_images",
            details={"shape": list(shape)},
        )
    labels = tensors.get("labels")
    if labels is None:
        return
    if labels.dtype not in INT_DTYPES:
        raise UnprocessableEntity(
            f"'labels' must be an integer tensor (int64), got {labels.dtype}",
            code="invalid_images",
            details={"dtype": labels.dtype},
        )
    if labels.shape != (shape[0],):
        raise UnprocessableEntity(
            f"'labels' must have shape [N] = [{shape[0]}] matching 'images', got {list(labels.shape)}",
            code="invalid_images",
            details={"shape": list(labels.shape), "expected": [shape[0]]},
        )


def nonfinite_tensors(path: Path, tensors: dict[str, TensorInfo]) -> list[str]:
    """Names of the floating-point tensors of ``path`` that hold NaN or inf, in header order.

    Streams the file tensor by tensor (large tensors in slices of about 4 M elements along their first axis)
    through ``safetensors.safe_open``: memory stays bounded and nothing is ever unpickled.
    """
    import torch

    bad = []
    with safe_open(str(path), framework="pt") as handle:
        for name, info in tensors.items():
            if info.dtype not in _SCANNED_DTYPES or math.prod(info.shape) == 0:
                continue
            if len(info.shape) == 0 or math.prod(info.shape) <= _SCAN_ELEMENTS:
                chunks = [handle.get_tensor(name)]
            else:
                view = handle.get_slice(name)
                step = max(1, _SCAN_ELEMENTS // max(1, math.prod(info.shape[1:])))
                chunks = (view[start : start + step] for start in range(0, info.shape[0], step))
            if any(not bool(torch.isfinite(chunk).all()) for chunk in chunks):
                bad.append(name)
    return bad
