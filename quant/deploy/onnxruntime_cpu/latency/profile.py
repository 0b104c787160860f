"""Measure a model's latency table on onnxruntime-cpu (``profile_latency``).

For each unique layer computation (``layers.unique_shapes``) one session per form runs the layer's nodes as the
export writes them (``graphs.layer_graph``: the form's emitter, ``..emit``) and one more runs ``Identity`` on the
same inputs (``graphs.overhead_graph``: the cost of a ``Run`` call itself, subtracted, so that isolated layer times
add up to a model). The whole float32 model is timed in the same loop. Every session is run as a deployment runs
a model: primed by one untimed ``Run`` right before each timed one (its weights and code are hot, as in back-to-back
inference), in shuffled interleaved rounds so that noise from other processes and frequency changes falls on all
sessions alike (``measure``).

What makes isolated times match in-graph times: the layer graphs have the exported model's symbolic batch
dimension (the same fusions: ``MatMulIntegerToFloat``, no ``Gemm`` rewrite), each layer's own input
``QuantizeLinear`` is part of its graph, the per-``Run`` overhead is subtracted, and idle thread pools of the
other sessions do not spin (``measure.MEASURE_CONFIG``). What remains (differences in cache state: a large
model streams its float weights from memory, fusions across layer boundaries, one thread-pool wake-up per isolated
``Run``) is in ``rest_ms`` for the float model; for other forms it is the prediction error.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .graphs import graph_inputs, layer_forms, layer_graph, overhead_graph
from .layers import LayerShape, capture_layers, unique_shapes
from .measure import open_session, time_interleaved
from .table import LatencyTable, cache_path, check_forms, read_cache, table_key, write_cache

__all__ = ["MIN_MS", "Timings", "measure_layers", "profile_latency", "table_from"]

#: Smallest per-call time kept after the overhead subtraction (ms): a layer is never free.
MIN_MS = 1e-3


@dataclass
class Timings:
    """What one interleaved measurement gives: per-call ms of each unique layer shape in each form (overhead
    subtracted, at least ``MIN_MS``), the per-``Run`` overhead of each shape, and each whole model's ms."""

    per_call: dict[str, dict[str, float]]
    overhead: dict[str, float]
    models: dict[str, float]
    sessions: int


def _run_of(session, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feeds)


def measure_layers(unique: Mapping[str, LayerShape], forms: tuple[str, ...], *, block_size: int,
                   input_shape: tuple[int, ...], models: Mapping[str, str | Path] | None = None,
                   rounds: int = 30, warmup: int = 5,
                   progress: Callable[[float], None] | None = None) -> Timings:
    """Time every unique layer shape in each of ``forms`` it accepts, its overhead graph and each whole ONNX model
    of ``models`` (``{name: path}``, input: one image of ``input_shape``), all in the same interleaved rounds."""
    runs: list[Callable[[], object]] = []
    labels: list[tuple[str, str]] = []
    for skey, shape in unique.items():
        feeds = graph_inputs(shape)
        for form in layer_forms(shape, forms):
            runs.append(_run_of(open_session(layer_graph(shape, form, block_size=block_size)), feeds))
            labels.append((skey, form))
        runs.append(_run_of(open_session(overhead_graph(shape)), feeds))
        labels.append((skey, "overhead"))
    image = np.random.default_rng(0).standard_normal((1, *input_shape), dtype=np.float32)
    for name, path in (models or {}).items():
        session = open_session(path)
        runs.append(_run_of(session, {session.get_inputs()[0].name: image}))
        labels.append(("model", name))
    medians = time_interleaved(runs, rounds=rounds, warmup=warmup, primed=range(len(runs)), progress=progress)
    timed = dict(zip(labels, medians, strict=True))
    overhead = {skey: timed[(skey, "overhead")] for skey in unique}
    per_call = {skey: {form: max(timed[(skey, form)] - overhead[skey], MIN_MS) for form in layer_forms(shape, forms)}
                for skey, shape in unique.items()}
    return Timings(per_call, overhead, {name: timed[("model", name)] for name in models or {}}, len(runs))


def table_from(timings: Timings, shapes: Mapping[str, LayerShape], key: dict, method: dict,
               fp32_model: str = "fp32") -> LatencyTable:
    """The ``LatencyTable`` of ``timings``: layers scaled by their calls, ``fp32_ms`` the model ``fp32_model``.

    When the isolated fp32 layers add up to more than the whole fp32 model (``rest`` would be negative: seen on tiny
    models and on a contended CPU, where each isolated ``Run`` pays thread wake-ups the in-graph layer does not),
    every layer time is scaled by ``fp32_ms / sum(fp32 layers)`` and ``rest_ms`` is 0, so ``predict`` stays
    positive and the all-fp32 prediction stays exactly ``fp32_ms``; ``method`` records the raw rest and the scale.
    """
    layers = {name: {form: ms * shape.calls for form, ms in timings.per_call[shape.key].items()}
              for name, shape in shapes.items()}
    fp32_ms = timings.models[fp32_model]
    layers_fp32 = sum(entry["fp32"] for entry in layers.values())
    raw_rest = fp32_ms - layers_fp32
    scale = 1.0
    if raw_rest < 0 and layers_fp32 > 0:
        scale = fp32_ms / layers_fp32
        layers = {name: {form: ms * scale for form, ms in forms.items()} for name, forms in layers.items()}
    rest_ms = max(raw_rest, 0.0)
    method = {**method, "overhead_ms": timings.overhead, "sessions": timings.sessions, "rest_negative": raw_rest < 0,
              "raw_rest_ms": raw_rest, "layer_scale": scale}
    return LatencyTable(key=key, layers=layers, rest_ms=rest_ms, fp32_ms=fp32_ms, method=method,
                        unique=timings.per_call, layer_shapes={name: shape.key for name, shape in shapes.items()})


def _check(rounds: int, warmup: int, block_size: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be an int >= 1 and warmup >= 0, got rounds={rounds!r}, warmup={warmup!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size!r}")


def profile_latency(qmodel: nn.Module, input_shape: tuple[int, int, int], *, block_size: int = 32,
                    forms_allowed: tuple[str, ...] | list[str] = (), cache_dir: str | Path | None = None,
                    rounds: int = 30, warmup: int = 5, fp32_onnx: str | Path | None = None,
                    progress: Callable[[float], None] | None = None) -> LatencyTable:
    """Measure (or load from ``cache_dir``) the latency table of a wrapped model for one image of ``input_shape``.

    forms_allowed: form names to measure (empty: all; ``fp32`` is always measured, ``rest_ms`` needs it);
    rounds / warmup: timed interleaved rounds (median per session) and untimed rounds before them; fp32_onnx: an
    ONNX file of the float32 model to time instead of exporting ``qmodel`` with every layer in float
    (``fp32.export_fp32``); progress(fraction in [0, 1]). A cache hit opens no session. Raises ``FormError``
    for unknown form names and ``ValueError`` for a bad block_size, rounds or warmup.
    """
    forms = check_forms(tuple(forms_allowed))
    _check(rounds, warmup, block_size)
    report = progress or (lambda _f: None)
    started = time.perf_counter()
    shapes = capture_layers(qmodel, tuple(input_shape))
    key = table_key(qmodel, tuple(input_shape), shapes, block_size, forms)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and (cached := read_cache(path, key)) is not None:
        report(1.0)
        return cached
    report(0.05)
    unique = unique_shapes(shapes)
    with tempfile.TemporaryDirectory(prefix="mpq-latency-") as tmp:
        source = "given" if fp32_onnx is not None else "exported"
        if fp32_onnx is None:
            from .fp32 import export_fp32

            fp32_onnx = export_fp32(qmodel, Path(tmp) / "fp32.onnx", tuple(input_shape))
        report(0.3)
        timings = measure_layers(unique, forms, block_size=block_size, input_shape=tuple(input_shape),
                                 models={"fp32": fp32_onnx}, rounds=rounds, warmup=warmup,
                                 progress=lambda f: report(0.3 + 0.7 * f))
    method = {"statistic": "median over interleaved shuffled rounds, each Run primed by an untimed one",
              "rounds": rounds, "warmup": warmup, "overhead_subtracted": True, "min_ms": MIN_MS,
              "unique_layers": len(unique), "fp32_source": source,
              "profile_seconds": time.perf_counter() - started}
    table = table_from(timings, shapes, key, method)
    if path is not None:
        write_cache(path, table)
    report(1.0)
    return table
