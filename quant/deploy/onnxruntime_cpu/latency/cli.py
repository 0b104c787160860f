"""``mpq profile-latency``: measure (or read from the cache) a model's per-layer latency table on onnxruntime-cpu.

Registered into the ``mpq`` command through ``add_profile_latency_command``; also runnable alone as
``python -m quant.deploy.onnxruntime_cpu.latency.cli --model builtin:vit-digits``. Prints one row per unique layer computation (its
layers, how many, ms per form) and the totals: the measured float32 model, the rest (non-layer ops) and the
predicted whole model with every layer in one form (layers without that form stay float32).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_profile_latency_command", "main", "run_profile_latency"]


def _forms(text: str) -> tuple[str, ...]:
    from ..forms import FORM_NAMES

    names = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in names if f not in FORM_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown forms {unknown}; choose from {', '.join(FORM_NAMES)}")
    return names


def add_profile_latency_command(subparsers) -> None:
    """Register the ``profile-latency`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("profile-latency", help="measure per-layer onnxruntime-cpu latency of a model")
    p.add_argument("--model", required=True, help="builtin:vit-digits, builtin:swin-digits or a timm name")
    p.add_argument("--weights", default=None, help="safetensors state_dict (timm names; timing ignores values)")
    p.add_argument("--arch-kwargs", default="{}", help='JSON keyword overrides for timm, e.g. \'{"img_size": 32}\'')
    p.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size (power of two >= 16)")
    p.add_argument("--forms", type=_forms, default=(), help="comma-separated forms to measure (default: all)")
    p.add_argument("--rounds", type=int, default=30, help="timed interleaved rounds (median per layer/form)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--cache-dir", default=None, help="latency cache folder (default: MPQ_LATENCY_CACHE or the "
                   "mpq data folder)")
    p.add_argument("--no-cache", action="store_true", help="measure even when a cached table exists; store nothing")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object")
    p.set_defaults(func=run_profile_latency)


def uniform_predictions(table) -> dict[str, float]:
    """``{form: predicted ms}`` with every layer in ``form`` where it has it, else ``fp32``."""
    forms = dict.fromkeys(f for entry in table.layers.values() for f in entry)
    return {form: table.predict({name: form if form in entry else "fp32" for name, entry in table.layers.items()})
            for form in forms}


def _print_table(table, out) -> None:
    groups: dict[str, list[str]] = {}
    for name, key in table.layer_shapes.items():
        groups.setdefault(key, []).append(name)
    forms = list(dict.fromkeys(f for entry in table.unique.values() for f in entry))
    rows = []
    for key, names in groups.items():
        label = names[0] if len(names) == 1 else f"{names[0]} (x{len(names)})"
        rows.append((label, key, [table.unique[key].get(f) for f in forms]))
    width = max(len(r[0]) for r in rows)
    print(f"{'layer'.ljust(width)}  " + "  ".join(f"{f:>8}" for f in forms) + "  shape", file=out)
    for label, key, values in rows:
        cells = "  ".join(f"{'-':>8}" if v is None else f"{v:8.3f}" for v in values)
        print(f"{label.ljust(width)}  {cells}  {key}", file=out)
    print("\nms per call (batch 1); x N: layers with the same shape", file=out)
    print(f"fp32 model (measured)  {table.fp32_ms:.3f} ms", file=out)
    note = (f"  (isolated layers summed to more than the model: every layer scaled by "
            f"{table.method.get('layer_scale', 1.0):.3f})") if table.method.get("rest_negative") else ""
    print(f"rest (non-layer ops)   {table.rest_ms:.3f} ms{note}", file=out)
    for form, ms in uniform_predictions(table).items():
        print(f"predicted, all {form:<5}  {ms:.3f} ms", file=out)
    seconds = table.method.get("profile_seconds")
    if seconds is not None:
        print(f"\nprofiled in {seconds:.1f} s ({table.method.get('rounds')} rounds, "
              f"{table.key.get('runtime')}, {table.key.get('threads')} threads)", file=out)


def run_profile_latency(args) -> int:
    """Execute ``mpq profile-latency`` for parsed ``args``; returns the exit code (2 for bad input)."""
    from ....models import ModelLoadError, build_model, model_info
    from ....wrap import wrap_model_
    from ..runtime import default_cache_dir
    from .profile import profile_latency

    try:
        arch_kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        print(f"mpq profile-latency: --arch-kwargs is not valid JSON: {exc}", file=sys.stderr)
        return 2
    try:
        info = model_info(args.model, arch_kwargs)
        model = build_model(args.model, arch_kwargs, args.weights)
        wrap_model_(model, target="onnxruntime-cpu", block_size=args.block_size)
        cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
        table = profile_latency(model, tuple(info["input_size"]), block_size=args.block_size,
                                forms_allowed=args.forms, cache_dir=cache_dir, rounds=args.rounds,
                                warmup=args.warmup)
    except (ModelLoadError, ValueError) as exc:  # FormError is a ValueError
        print(f"mpq profile-latency: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**table.to_dict(), "predicted_uniform_ms": uniform_predictions(table)}))
    else:
        _print_table(table, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m quant.deploy.onnxruntime_cpu.latency.cli --model ...``."""
    parser = argparse.ArgumentParser(prog="mpq")
    sub = parser.add_subparsers(dest="command", required=True)
    add_profile_latency_command(sub)
    args = parser.parse_args(["profile-latency", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
