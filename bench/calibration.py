"""Calibration cost: the whole parameter table of a mixed-precision job against one width, measured in one run.

Three measurements, each in a fresh process (so no run warms another's caches), interleaved over ``--repeats``
rounds, median CPU seconds (``time.process_time``, summed over threads; steadier than wall time on a shared machine)
and wall seconds:

- ``table``: what a mixed-precision job's ``calibrate`` stage does: reparameterization at the (4, 4) reference and
  the table of every default candidate (weights 2/3/4/5/6/8 x inputs 3/4/5/6/8, head and patch embedding at 8),
  each fitted and searched at its own width;
- ``single``: the same code for one width (a uniform W4A4 job's table);
- ``baseline``: ``--baseline REV`` (a git revision, default the last commit before the parameter table) checked out
  into a temporary worktree and its single-width W4A4 calibration (``quantize_ptq`` with the output-aware search),
  i.e. what a job calibrated before. Needs git; ``--baseline ''`` skips it.

Usage: ``.venv/bin/python bench/calibration.py [--model vit-digits] [--repeats 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "57dfa04"

_COMMON = """
import os, time, json
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
torch.set_num_threads({threads})
from quant.models import build_model
from quant.data import load_dataset
model = build_model("builtin:{model}")
calib = load_dataset("builtin:digits", split="calib", model_name="builtin:{model}").images
torch.manual_seed(0)
"""

SNIPPETS = {
    "table": """
from quant.choices import reference_pairs, table_pairs
from quant.config import MethodSpec
from quant.ptq import calibration_plan, reparameterize_for_, wrapped_copy
from quant.calibration import calibrate_table
from quant.wrap import quant_layers
method = MethodSpec(budgets={{"wbits": 3.0}})
c0, t0 = time.process_time(), time.perf_counter()
q = wrapped_copy(model)
kinds = {{n: (l.component, l.has_weight) for n, l in quant_layers(q).items()}}
pairs, reference = table_pairs(kinds, method), reference_pairs(kinds, method)
reparameterize_for_(q, calib, method="dopq", reference=reference)
table = calibrate_table(q, calib, calibration_plan(q, method="dopq", pairs=pairs, reference=reference))
entries = sum(len(table.pairs(n)) for n in table.layers())
print(json.dumps({{"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0, "entries": entries}}))
""",
    "single": """
from quant.ptq import quantize_table
c0, t0 = time.process_time(), time.perf_counter()
_, table, _, _ = quantize_table(model, calib, method="dopq", wbits=4, abits=4)
entries = sum(len(table.pairs(n)) for n in table.layers())
print(json.dumps({{"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0, "entries": entries}}))
""",
    "baseline": """
from quant.ptq import quantize_ptq
c0, t0 = time.process_time(), time.perf_counter()
quantize_ptq(model, calib, method="dopq", wbits=4, abits=4)
print(json.dumps({{"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0, "entries": None}}))
""",
}


def _run(kind: str, tree: Path, model: str, threads: int) -> dict:
    code = (_COMMON + SNIPPETS[kind]).format(model=model, threads=threads)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the single-width baseline ('' = skip)")
    args = parser.parse_args()
    kinds = ["table", "single"]
    with tempfile.TemporaryDirectory(prefix="mpq-baseline-") as tmp:
        baseline_tree = None
        if args.baseline:
            baseline_tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                           check=True, capture_output=True)
            kinds.append("baseline")
        try:
            results: dict[str, list[dict]] = {k: [] for k in kinds}
            for _ in range(args.repeats):
                for kind in kinds:
                    tree = baseline_tree if kind == "baseline" else ROOT
                    results[kind].append(_run(kind, tree, args.model, args.threads))
        finally:
            if baseline_tree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                               check=False, capture_output=True)
    medians = {k: {m: statistics.median(r[m] for r in runs) for m in ("cpu", "wall")} for k, runs in results.items()}
    reference = medians.get("baseline", medians["single"])
    print(f"| {args.model}, {args.threads} threads, median of {args.repeats} | entries | CPU s | wall s | CPU vs "
          f"{'baseline' if 'baseline' in medians else 'single'} |")
    print("|---|---|---|---|---|")
    labels = {"table": "whole table (mixed job, default candidates)", "single": "one width (uniform W4A4 table)",
              "baseline": f"one width before the table ({args.baseline})"}
    for kind in kinds:
        entries = results[kind][0]["entries"]
        print(f"| {labels[kind]} | {entries if entries is not None else '-'} | {medians[kind]['cpu']:.1f} | "
              f"{medians[kind]['wall']:.1f} | {medians[kind]['cpu'] / reference['cpu']:.2f}x |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
