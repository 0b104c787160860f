"""Deployment benchmark: onnxruntime latency, weight bytes and accuracy of mpq's per-layer forms on the CPU.

For each model (the built-in ``vit-digits`` with its trained weights and test split; timm ``deit_small_patch16_224``
with random weights at 224x224 on random images) this runs the real pipeline with ``target="onnxruntime-cpu"`` and
``export_onnx=True`` for these variants:

- ``fp32``: every layer in the fp32 form;
- ``int8``: uniform int8 QDQ (uint8 activations, int8 per-channel weights), attention matmuls int8 too;
- ``w4``: uniform int4 weight-only ``MatMulNBits`` (float activations; patch embedding fp32, matmuls fp32);
- ``mpq@0.5/0.6/0.7``: mixed forms chosen by the ILP under a latency budget of that fraction of the measured fp32
  model (sensitivity and latency table reused from the first mixed run, as a reallocation does);
- ``mpq@int8``: mixed under ``latency_ms`` = uniform int8's latency (as the table predicts it: a budget and a
  prediction must be the same kind of number; both variants are then measured side by side);
- ``mpq@int8+size``: the same plus ``size`` = uniform int8's weight bytes.

The mixed variants let the allocation choose the patch embedding's and head's form too (``head_bits`` None); the
uniform ones keep them at 8 bits, as the usual recipes do.

Every exported ``model.onnx`` is then timed again, interleaved (each round runs every variant once, in a shuffled
order, each timed run primed by an untimed one), median of ``--rounds`` rounds at batch 1 with the sessions the
latency table is measured with (``quant.deploy.onnxruntime_cpu.latency.measure``: mpq's session options, pools not left spinning).
Columns: measured latency and its ratio to fp32, the latency table's prediction and its error, weight bytes (the
ONNX file's initializers), KL to the float model and top-1 (built-in: against labels; deit: agreement with the float
model, its weights being random) of the torch simulation, and top-1 of onnxruntime itself.

Usage: ``.venv/bin/python bench/deploy.py [--models vit-digits,deit_small] [--rounds 30] [--markdown]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see quant/__init__.py)

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.deploy.onnxruntime_cpu.latency.measure import open_session, time_interleaved
from quant.deploy.onnxruntime_cpu.runtime import runtime_fingerprint
from quant.errors import PipelineInputError
from quant.pipeline import InMemoryStageStore, run_pipeline

_FRACTIONS = (0.5, 0.6, 0.7)


def _models(workdir: Path, names: list[str]) -> dict[str, tuple[ModelSpec, DataSpec]]:
    out = {}
    if "vit-digits" in names:
        out["vit-digits"] = (ModelSpec(name="builtin:vit-digits"), DataSpec(num_calibration=128))
    if "deit_small" in names:
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model("deit_small_patch16_224", pretrained=False)
        weights = workdir / "deit_small.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        generator = torch.Generator().manual_seed(1)
        for split, count in (("calib", 32), ("eval", 64)):
            images = torch.randn(count, 3, 224, 224, generator=generator)
            save_file({"images": images}, str(workdir / f"{split}.safetensors"))
        out["deit_small"] = (
            ModelSpec(name="deit_small_patch16_224", weights_path=str(weights)),
            DataSpec(source=str(workdir / "calib.safetensors"), eval_source=str(workdir / "eval.safetensors"),
                     num_calibration=32, batch_size=16),
        )
    return out


def _method(**overrides) -> MethodSpec:
    base = {"quantizer": "dopq", "target": "onnxruntime-cpu", "range_search": "minmax", "reconstruct": "none",
            "iterative_rounds": 0}
    return MethodSpec(**{**base, **overrides})


def _run(model: ModelSpec, data: DataSpec, method: MethodSpec, out_dir: Path, store=None) -> dict:
    """One pipeline run; an unreachable latency budget gives ``{"infeasible": message, "stages": ...}``."""
    config = PipelineConfig(model=model, data=data, method=method, export_onnx=True, preset="quick")
    started = time.perf_counter()
    store = store or InMemoryStageStore(out_dir / "work")
    try:
        result = run_pipeline(config, output_dir=out_dir, store=store)
    except PipelineInputError as exc:
        if exc.code != "infeasible_budget":
            raise
        return {"infeasible": exc.message, "min": exc.details.get("min_achievable", {}), "stages": store.outputs}
    metrics = result.metrics
    deployment = metrics.get("deployment") or {}
    return {
        "onnx": out_dir / "model.onnx",
        "kl": metrics["quantized"]["kl"],
        "top1": metrics["quantized"]["top1"],
        "agreement": metrics["quantized"]["agreement"],
        "onnx_top1": deployment.get("onnx_top1"),
        "onnx_agreement": deployment.get("agreement"),
        "predicted_ms": metrics.get("predicted_latency_ms"),
        "budgets": result.budgets,
        "stages": result.stages,
        "seconds": time.perf_counter() - started,
        "forms": _form_counts(result.allocation),
        "size": metrics["size_bytes"],
    }


def _form_counts(allocation: dict) -> str:
    counts: dict[str, int] = {}
    for entry in allocation.values():
        counts[entry.get("form", "?")] = counts.get(entry.get("form", "?"), 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def _weight_bytes(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.raw_data else onnx.numpy_helper.to_array(tensor).nbytes
    return total


def _interleaved(paths: dict[str, Path], input_shape, rounds: int) -> dict[str, float]:
    """Median ms per variant, batch 1: shuffled interleaved rounds, each timed run primed by an untimed one (as a
    deployed model runs back to back), with the latency table's measurement sessions
    (``quant.deploy.onnxruntime_cpu.latency.measure``: mpq's session options, thread pool not left spinning between runs, so the idle sessions do not steal the
    cores of the one being timed)."""
    names = list(paths)
    sessions = [open_session(str(paths[name])) for name in names]
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    runs = [(lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for s in sessions]
    medians = time_interleaved(runs, rounds=rounds, warmup=3, primed=range(len(runs)))
    return dict(zip(names, medians, strict=True))


def bench_model(label: str, model: ModelSpec, data: DataSpec, workdir: Path, rounds: int) -> list[list[str]]:
    runs: dict[str, dict] = {}
    root = workdir / label
    print(f"[{label}] fp32, int8, w4 ...", file=sys.stderr, flush=True)
    runs["fp32"] = _run(model, data, _method(wbits=16, abits=16, head_bits=None), root / "fp32")
    runs["int8"] = _run(model, data, _method(wbits=8, abits=8, head_bits=8), root / "int8")
    runs["w4"] = _run(model, data, _method(wbits=4, abits=16, head_bits=None,
                                           fixed_layers={"patch_embed.proj": (16, 16)}), root / "w4")
    latency_table = runs["int8"]["stages"]["latency"]["table"]
    input_shape = tuple(runs["fp32"]["stages"]["load"]["input_shape"])
    first = f"mpq@{_FRACTIONS[0]}"
    print(f"[{label}] {first} (sensitivity) ...", file=sys.stderr, flush=True)
    # mixed jobs may choose any form for the patch embedding and the head too (head_bits None): on CPUs where
    # int8 does not pay there (2-D head, Conv without QLinearConv) fp32 is both faster and exact
    runs[first] = _run(model, data, _method(head_bits=None, budgets={"latency": _FRACTIONS[0]}), root / "mixed0",
                       InMemoryStageStore(root / "mixed0" / "work", {"latency": runs["int8"]["stages"]["latency"]}))
    reused = {"sensitivity": runs[first]["stages"]["sensitivity"], "latency": runs["int8"]["stages"]["latency"]}
    for index, fraction in enumerate(_FRACTIONS[1:], start=1):
        print(f"[{label}] mpq@{fraction} ...", file=sys.stderr, flush=True)
        runs[f"mpq@{fraction}"] = _run(model, data, _method(head_bits=None, budgets={"latency": fraction}),
                                       root / f"mixed{index}",
                                       InMemoryStageStore(root / f"mixed{index}" / "work", dict(reused)))
    # "at uniform int8's latency": the budget is int8's latency in the table's units (its prediction), so that
    # "mixed <= int8" is a statement about the same kind of number; both are then measured side by side below
    int8_ms = runs["int8"]["predicted_ms"]
    print(f"[{label}] mpq@int8 ({int8_ms:.3f} ms predicted) ...", file=sys.stderr, flush=True)
    runs["mpq@int8"] = _run(model, data, _method(head_bits=None, budgets={"latency_ms": int8_ms}),
                            root / "mixed_int8", InMemoryStageStore(root / "mixed_int8" / "work", dict(reused)))
    print(f"[{label}] mpq@int8+size ...", file=sys.stderr, flush=True)
    runs["mpq@int8+size"] = _run(model, data, _method(head_bits=None, budgets={"latency_ms": int8_ms,
                                                                              "size": runs["int8"]["size"]}),
                                 root / "mixed_int8_size",
                                 InMemoryStageStore(root / "mixed_int8_size" / "work", dict(reused)))
    exported = {name: r["onnx"] for name, r in runs.items() if "onnx" in r}
    _interleaved(exported, input_shape, rounds)
    measured = _interleaved(exported, input_shape, rounds)
    fp32 = measured["fp32"]
    rows = []
    for name, r in runs.items():
        if "infeasible" in r:
            fastest = r["min"].get("latency_ms")
            rows.append([label, name, "infeasible", "-", "-", "-", "-", "-", "-", "-",
                         f"fastest executable assignment {fastest:.3f} ms predicted "
                         f"({fastest / latency_table['fp32_ms']:.2f} of fp32)" if fastest else r["infeasible"]])
            continue
        predicted = r["predicted_ms"]
        error = "-" if predicted is None else f"{100 * (predicted / measured[name] - 1):+.1f} %"
        rows.append([
            label, name, f"{measured[name]:.3f}", f"{fp32 / measured[name]:.2f}x",
            "-" if predicted is None else f"{predicted:.3f}", error,
            f"{_weight_bytes(r['onnx']) / 1e6:.2f}", f"{r['kl']:.2e}",
            f"{r['top1']:.1f}" if label == "vit-digits" else f"{r['agreement']:.1f}",
            "-" if r["onnx_top1"] is None else f"{r['onnx_top1']:.1f}", r["forms"],
        ])
    fp32_table = latency_table.get("fp32_ms")
    print(f"[{label}] latency table fp32 {fp32_table} ms, rest {latency_table.get('rest_ms')} ms", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit-digits,deit_small")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    header = ["model", "variant", "measured ms", "speed-up", "predicted ms", "prediction error", "weights MB",
              "KL", "top-1 / agreement %", "onnxruntime top-1 %", "forms"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpq-deploy-") as tmp:
        workdir = Path(tmp)
        for label, (model, data) in _models(workdir, args.models.split(",")).items():
            rows += bench_model(label, model, data, workdir, args.rounds)
    print(f"\n{runtime_fingerprint()}; batch 1; median of {args.rounds} interleaved rounds\n")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in [header, *rows]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
