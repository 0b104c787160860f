"""onnxruntime sessions as mpq runs them: one place for the session options that the latency table, the export
check and ``bench/deploy.py`` share, so what is measured is what is deployed.

Threads: ``MPQ_ORT_THREADS`` (default: every CPU this process may use); graph optimisation level ``ORT_ENABLE_ALL``
(the QDQ fusions to ``MatMulIntegerToFloat``/``QLinearConv`` need it); sequential execution; CPU provider.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping

__all__ = ["cpu_name", "default_cache_dir", "make_session", "runtime_fingerprint", "session_options", "threads", "time_runs"]


def threads() -> int:
    """intra-op threads: ``MPQ_ORT_THREADS`` or the CPUs this process may run on."""
    value = os.environ.get("MPQ_ORT_THREADS", "")
    if value.strip():
        return max(int(value), 1)
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def session_options():
    """``onnxruntime.SessionOptions`` used for every mpq measurement and check."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def make_session(model, config: Mapping[str, str] | None = None):
    """An ``InferenceSession`` on the CPU provider for an ONNX ``ModelProto``, its serialized bytes or a path;
    ``config``: extra session config entries (``add_session_config_entry``), e.g. for measurement."""
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    options = session_options()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), or ``platform.processor()`` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_fingerprint() -> dict:
    """What a latency measurement depends on besides the model: runtime version, CPU, ISA flags, threads."""
    import onnxruntime as ort

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                    present = set(line.split(":", 1)[1].split())
                    flags = ",".join(f for f in wanted if f in present)
                    break
    except OSError:
        pass
    return {"runtime": f"onnxruntime {ort.__version__}", "cpu": cpu_name(), "isa": flags, "threads": threads()}


def time_runs(run: Callable[[], object], *, warmup: int, repeats: int) -> list[float]:
    """Call ``run`` ``warmup`` times untimed, then ``repeats`` times; wall milliseconds of each timed call."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def default_cache_dir():
    """Where measured latency tables are cached: ``MPQ_LATENCY_CACHE``, else ``$MPQ_HOME/latency``, else
    ``$XDG_DATA_HOME/mpq/latency`` or ``~/.local/share/mpq/latency`` (the service's data directory rule)."""
    from pathlib import Path

    explicit = os.environ.get("MPQ_LATENCY_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("MPQ_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "latency"
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mpq" / "latency"
