"""The per-layer latency table of a wrapped model on onnxruntime-cpu (measured by ``profile.profile_latency``)
and its on-disk cache.

- ``layers[name][form]``: milliseconds of the layer in that form inside a model, per image (batch 1);
- ``fp32_ms``: the whole float32 model, per image, timed back to back with itself as a deployment runs it;
- ``rest_ms = fp32_ms - sum(layers[name]["fp32"])``: everything that is not a quantization layer (LayerNorm,
  softmax, GELU, reshapes, residual adds, one ``Run`` call). It may be negative when isolated layers run slower
  than inside the model (``method["rest_negative"]``);
- ``predict(forms) = rest_ms + sum(layers[name][forms[name]])``.

Tables are cached as JSON files ``<sha256 of the key>.json`` under ``cache_dir``; the key holds the architecture,
every layer's shapes, the forms, the block size and the runtime fingerprint (onnxruntime version, CPU, ISA,
threads), not the weights (timing does not depend on their values). A cache hit opens no session.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ...form import FormError
from ..forms import FORM_NAMES
from ..runtime import runtime_fingerprint
from .layers import LayerShape

__all__ = ["CACHE_VERSION", "LatencyTable", "cache_path", "check_forms", "read_cache", "table_key", "write_cache"]

#: Bumped when what is measured changes, so old cache files are not reused.
CACHE_VERSION = 2


@dataclass
class LatencyTable:
    """Measured latency of every quantization layer in every allowed form (module docstring).

    key: what the numbers depend on (``arch``, ``input_shape``, ``batch``, ``block_size``, ``forms``,
    ``runtime``, ``cpu``, ``isa``, ``threads``, ``shapes_sha256``, ``version``); layers: ``{layer: {form: ms}}``
    per image (a layer called several times per image counts every call); rest_ms / fp32_ms: milliseconds;
    method: how it was measured (rounds, warmup, overheads, seconds); unique: ``{shape key: {form: ms per call}}``;
    layer_shapes: ``{layer: shape key}``.
    """

    key: dict
    layers: dict[str, dict[str, float]]
    rest_ms: float
    fp32_ms: float
    method: dict = field(default_factory=dict)
    unique: dict[str, dict[str, float]] = field(default_factory=dict)
    layer_shapes: dict[str, str] = field(default_factory=dict)

    def ms(self, layer: str, form: str) -> float:
        """Milliseconds of ``layer`` in ``form``; ``KeyError`` naming the known layers / forms otherwise."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer!r} is not in the latency table; its layers include {list(self.layers)[:5]}")
        forms = self.layers[layer]
        if form not in forms:
            raise KeyError(f"form {form!r} of layer {layer!r} was not measured; measured forms: {sorted(forms)}")
        return forms[form]

    def predict(self, forms: Mapping[str, str]) -> float:
        """Predicted whole-model milliseconds per image with ``{layer: form}`` (layers not named: ``fp32``)."""
        unknown = [name for name in forms if name not in self.layers]
        if unknown:
            raise KeyError(f"layers {unknown[:5]} are not in the latency table; its layers include "
                           f"{list(self.layers)[:5]}")
        return self.rest_ms + sum(self.ms(name, forms.get(name, "fp32")) for name in self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyTable:
        """Inverse of ``to_dict``; ``ValueError`` naming the missing field for a malformed dict."""
        missing = [k for k in ("key", "layers", "rest_ms", "fp32_ms") if k not in data]
        if missing:
            raise ValueError(f"latency table dict lacks {missing}; was it written by LatencyTable.to_dict?")
        return cls(key=dict(data["key"]),
                   layers={n: {f: float(v) for f, v in forms.items()} for n, forms in data["layers"].items()},
                   rest_ms=float(data["rest_ms"]), fp32_ms=float(data["fp32_ms"]), method=dict(data.get("method", {})),
                   unique={k: {f: float(v) for f, v in forms.items()} for k, forms in data.get("unique", {}).items()},
                   layer_shapes=dict(data.get("layer_shapes", {})))


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def check_forms(forms_allowed) -> tuple[str, ...]:
    """The form names to measure for ``forms_allowed`` (empty: all), always with ``fp32``, in ``FORM_NAMES``
    order; ``FormError`` for an unknown name."""
    unknown = [f for f in forms_allowed if f not in FORM_NAMES]
    if unknown:
        raise FormError(f"unknown forms {unknown}; onnxruntime-cpu forms are {', '.join(FORM_NAMES)}")
    return tuple(f for f in FORM_NAMES if not forms_allowed or f in forms_allowed or f == "fp32")


def table_key(qmodel: nn.Module, input_shape: tuple[int, int, int], shapes: Mapping[str, LayerShape],
              block_size: int, forms: tuple[str, ...]) -> dict:
    """The cache key of a table (see ``LatencyTable.key``); ``shapes`` from ``capture_layers``."""
    layout = json.dumps([[name, s.key, s.calls] for name, s in shapes.items()])
    return {"version": CACHE_VERSION, "arch": _arch(qmodel), "input_shape": list(input_shape), "batch": 1,
            "block_size": int(block_size), "forms": list(forms),
            "shapes_sha256": hashlib.sha256(layout.encode()).hexdigest(), **runtime_fingerprint()}


def cache_path(cache_dir: str | Path, key: Mapping) -> Path:
    """``cache_dir / <sha256 of the canonical JSON of key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{digest}.json"


def read_cache(path: Path, key: Mapping) -> LatencyTable | None:
    """The table cached at ``path`` when it exists, parses and has exactly ``key``; else None."""
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # missing or unreadable: measure again (and overwrite)
    return table if table.key == dict(key) else None


def write_cache(path: Path, table: LatencyTable) -> None:
    """Write ``table`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(table.to_dict(), handle, indent=1)
    os.replace(tmp, path)
