"""``mpq quantize``: run one quantization job locally with a progress bar and print or save its result.

Registered into the ``mpq`` command by ``service.cli`` through ``add_quantize_parser`` (with ``mpq
profile-latency`` from :mod:`quant.deploy.onnxruntime_cpu.latency.cli`); also runnable alone as ``python -m quant.cli quantize ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_quantize_parser", "main", "parse_budget", "process_seconds", "run_quantize"]


def parse_budget(text: str) -> tuple[str, float]:
    """``"wbits=3.5"`` -> ``("wbits", 3.5)``; sizes accept K/M/G suffixes (``size=2M``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"budget {text!r} must look like NAME=VALUE, e.g. wbits=3.5")
    multiplier = 1.0
    suffixes = {"k": 1e3, "m": 1e6, "g": 1e9}
    if value and value[-1].lower() in suffixes:
        multiplier, value = suffixes[value[-1].lower()], value[:-1]
    try:
        return key.strip(), float(value) * multiplier
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"budget {text!r}: {value!r} is not a number") from exc


def _parse_fixed(text: str) -> tuple[str, tuple[int, int]]:
    name, sep, bits = text.partition("=")
    try:
        wbits, abits = (int(b) for b in bits.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fix {text!r} must look like LAYER=WBITS,ABITS") from exc
    if not sep:
        raise argparse.ArgumentTypeError(f"--fix {text!r} must look like LAYER=WBITS,ABITS")
    return name, (wbits, abits)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} must be a comma-separated list of integers") from exc


_RECONSTRUCT_ALIASES = {"fimaq": "fisher_dplr", "dplr": "fisher_dplr", "diag": "fisher_diag", "lr": "fisher_lr",
                        "mse": "mse", "none": "none", "fisher_dplr": "fisher_dplr", "fisher_diag": "fisher_diag",
                        "fisher_lr": "fisher_lr"}


def add_quantize_parser(subparsers) -> None:
    """Register the ``quantize`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("quantize", help="quantize one model locally and print its metrics")
    p.add_argument("--model", required=True, help="builtin:vit-digits, builtin:swin-digits or a timm name")
    p.add_argument("--arch-kwargs", default="{}", help='JSON keyword overrides for timm, e.g. \'{"img_size": 32}\'')
    p.add_argument("--weights", default=None, help="safetensors state_dict (required for timm names)")
    p.add_argument("--data", default="builtin:digits", help="builtin:digits, a safetensors file of images, or "
                   "synthetic (data-free: --num-calib images generated from the model, see docs/data-free.md)")
    p.add_argument("--synthetic-steps", type=int, default=None, help="--data synthetic: Adam steps per batch")
    p.add_argument("--synthetic-seed", type=int, default=None, help="--data synthetic: noise seed (default --seed)")
    p.add_argument("--eval-data", default=None, help="safetensors file with evaluation images and labels")
    p.add_argument("--num-calib", type=int, default=None, help="calibration images to use (preset: 256 quick, "
                   "1024 paper)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--method", choices=("minmax", "repq", "dopq"), default="dopq", help="PTQ quantizer recipe")
    p.add_argument("--wbits", type=int, default=4, help="uniform weight bits (without --budget)")
    p.add_argument("--abits", type=int, default=4, help="uniform activation bits (without --budget)")
    p.add_argument("--head-bits", type=int, default=8, help="bits of patch embedding and head (0 = same as rest)")
    p.add_argument("--budget", action="append", type=parse_budget, default=[],
                   help="mixed-precision budget NAME=VALUE (wbits, abits, size bytes, bops; with --target "
                        "onnxruntime-cpu also latency=FRACTION of the measured fp32 model or latency_ms=MS); "
                        "repeatable")
    p.add_argument("--target", choices=("sim", "onnxruntime-cpu"), default="sim",
                   help="deployment target: sim (simulated bit-widths) or onnxruntime-cpu (only forms onnxruntime "
                        "executes: fp32, int8 QDQ, MatMulNBits w8/w4/w4a8; per-layer latency measured)")
    p.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size along K (onnxruntime-cpu)")
    p.add_argument("--forms", type=lambda t: tuple(v for v in t.split(",") if v), default=(),
                   help="comma-separated forms the allocation may use (onnxruntime-cpu; default all: "
                        "fp32,int8,w8,w4,w4a8)")
    p.add_argument("--sweep", type=int, default=0, help="also solve a Pareto curve of this many budget points")
    p.add_argument("--sweep-budget", default=None, help="budget the sweep varies (default: the first --budget)")
    p.add_argument("--sweep-measure", type=int, default=3,
                   help="onnxruntime-cpu with --onnx: sweep points exported and measured (default 3)")
    p.add_argument("--candidate-wbits", type=_int_list, default=(2, 3, 4, 5, 6, 8))
    p.add_argument("--candidate-abits", type=_int_list, default=(3, 4, 5, 6, 8))
    p.add_argument("--fix", action="append", type=_parse_fixed, default=[], help="LAYER=WBITS,ABITS; repeatable")
    p.add_argument("--no-type-aware", action="store_true", help="disable the per-type sensitivity scaling")
    p.add_argument("--iterative-rounds", type=int, default=None, help="LampQ iterative update rounds (preset)")
    p.add_argument("--reconstruct", default=None, choices=sorted(_RECONSTRUCT_ALIASES),
                   help="block reconstruction loss (fimaq = fisher_dplr; preset: none quick, fisher_dplr paper)")
    p.add_argument("--iters", type=int, default=None, help="reconstruction iterations per block (preset: 500 "
                   "quick, 20000 paper)")
    p.add_argument("--rank", type=int, default=None, help="rank k of the FIMA-Q low-rank term (preset: 5)")
    p.add_argument("--preset", choices=("auto", "quick", "paper"), default="auto",
                   help="settings sized for the hardware: quick (CPU demo), paper (published settings); auto = "
                        "paper on CUDA, quick otherwise. Explicit options override the preset")
    p.add_argument("--range-search", choices=("auto", "minmax", "output"), default="auto",
                   help="range calibration: output-aware search, fast minmax/MSE, or auto (output except minmax)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None, help="folder to write the quantized bundle to")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx into --output (QDQ; with --target "
                   "onnxruntime-cpu the exact mixed graph, checked against the simulation and timed)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run_quantize)


def _given(**values) -> dict:
    """The options given on the command line (not None): only these override the preset."""
    return {k: v for k, v in values.items() if v is not None}


def _build_config(args):
    from .config import SYNTHETIC_SOURCE, DataSpec, MethodSpec, ModelSpec, PipelineConfig, SyntheticSpec

    try:
        arch_kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"mpq quantize: --arch-kwargs is not valid JSON: {exc}") from exc
    return PipelineConfig(
        model=ModelSpec(name=args.model, arch_kwargs=arch_kwargs, weights_path=args.weights),
        data=DataSpec(source=args.data, eval_source=args.eval_data, batch_size=args.batch_size,
                      **_given(num_calibration=args.num_calib, synthetic=SyntheticSpec(
                          **_given(steps=args.synthetic_steps, seed=args.synthetic_seed))
                          if args.data == SYNTHETIC_SOURCE else None)),
        method=MethodSpec(
            quantizer=args.method, wbits=args.wbits, abits=args.abits,
            head_bits=args.head_bits or None, budgets=dict(args.budget),
            candidate_wbits=tuple(args.candidate_wbits), candidate_abits=tuple(args.candidate_abits),
            fixed_layers=dict(args.fix), type_aware=not args.no_type_aware,
            range_search=args.range_search, target=args.target, block_size=args.block_size,
            forms=tuple(args.forms), sweep=args.sweep, sweep_budget=args.sweep_budget,
            sweep_measure=args.sweep_measure,
            **_given(iterative_rounds=args.iterative_rounds, reconstruct_iters=args.iters, reconstruct_rank=args.rank,
                     reconstruct=_RECONSTRUCT_ALIASES[args.reconstruct] if args.reconstruct else None),
        ),
        seed=args.seed, device=args.device, export_onnx=args.onnx, preset=args.preset,
    )


def _summary(result) -> dict:
    m = result.metrics
    return {
        "float": m["float"],
        "quantized": m["quantized"],
        "bits": m["bits"],
        "size_bytes": m["size_bytes"],
        "bops": m["bops"],
        "timings": result.timings,
        "allocation": result.allocation,
        "budgets": result.budgets,
        "artifact": str(result.artifact_dir) if result.artifact_dir else None,
        "warnings": list(getattr(result, "warnings", []) or []),
        "predicted_latency_ms": m.get("predicted_latency_ms"),
        "deployment": m.get("deployment"),
    }


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included); None off Linux."""
    import os

    try:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - int(fields[19]) / ticks, 0.0)
    except (OSError, ValueError, IndexError):
        return None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_table(summary: dict, out) -> None:
    rows = [
        ("float top-1 (%)", summary["float"]["top1"]),
        ("quantized top-1 (%)", summary["quantized"]["top1"]),
        ("top-1 agreement (%)", summary["quantized"]["agreement"]),
        ("KL to float (nats)", summary["quantized"]["kl"]),
        ("float test cross-entropy", summary["float"].get("cross_entropy")),
        ("quantized test cross-entropy", summary["quantized"].get("cross_entropy")),
        ("avg weight bits", summary["bits"]["weights_avg"]),
        ("avg activation bits", summary["bits"]["activations_avg"]),
        ("weight bytes", summary["size_bytes"]),
        ("BOPs / image", summary["bops"]),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric'.ljust(width)}  value", file=out)
    for label, value in rows:
        print(f"{label.ljust(width)}  {_fmt(value)}", file=out)
    if summary["budgets"]:
        print("\nbudget  limit  used", file=out)
        for name, usage in summary["budgets"].items():
            print(f"{name}  {_fmt(usage.get('limit'))}  {_fmt(usage.get('used'))}", file=out)
    if summary.get("predicted_latency_ms") is not None:
        deployment = summary.get("deployment") or {}
        print(f"\nlatency (onnxruntime, batch 1): predicted {_fmt(summary['predicted_latency_ms'])} ms, "
              f"measured {_fmt(deployment.get('latency_ms'))} ms", file=out)
    distinct = {(v["wbits"], v["abits"]) for v in summary["allocation"].values()}
    if len(distinct) > 2:
        print("\nlayer  wbits  abits  form", file=out)
        for name, bits in summary["allocation"].items():
            print(f"{name}  {bits['wbits']}  {bits['abits']}  {bits.get('form', '-')}", file=out)
    print("\nstage seconds: " + ", ".join(f"{k}={v:.2f}" for k, v in summary["timings"].items()), file=out)


def run_quantize(args) -> int:
    """Execute ``mpq quantize`` for parsed ``args``; returns the exit code (2 for bad input)."""
    import shutil
    import tempfile

    from .pipeline import InMemoryStageStore, PipelineInputError, run_pipeline

    if args.onnx and not args.output:
        print("mpq quantize: --onnx needs --output DIR", file=sys.stderr)
        return 2
    try:
        config = _build_config(args)
    except ValueError as exc:
        print(f"mpq quantize: {exc}", file=sys.stderr)
        return 2
    bar = _ProgressBar(enabled=not args.json and sys.stderr.isatty())
    startup = process_seconds()
    workdir = Path(tempfile.mkdtemp(prefix="mpq-"))  # block checkpoints; removed when the run ends
    try:
        result = run_pipeline(config, progress=bar.update, output_dir=Path(args.output) if args.output else None,
                              store=InMemoryStageStore(workdir))
    except PipelineInputError as exc:
        bar.close()
        print(f"mpq quantize: {exc.message}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bar.close()
    summary = _summary(result)
    if startup is not None:
        summary["timings"] = {"startup": startup, **summary["timings"]}
    for warning in summary["warnings"]:
        print(f"mpq quantize: warning: {warning['message']}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_table(summary, sys.stdout)
    return 0


class _ProgressBar:
    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{desc} {bar} {n:.0f}%")

    def update(self, stage: str, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{stage:<11}")
            self.bar.n = round(100 * fraction)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m quant.cli quantize ...``."""
    parser = argparse.ArgumentParser(prog="mpq")
    sub = parser.add_subparsers(dest="command", required=True)
    add_quantize_parser(sub)
    from .deploy.onnxruntime_cpu.latency.cli import add_profile_latency_command

    add_profile_latency_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
