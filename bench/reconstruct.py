"""Cost of FIMA-Q reconstruction on ``deit_tiny_patch16_224`` (random weights): DPLR vs MSE per iteration, the
Fisher snapshot's tail-only pass vs a full-model pass, and peak memory.

    python bench/reconstruct.py [--img-size 224] [--images 64] [--iters 40] [--blocks 2] [--threads 1]
    python bench/reconstruct.py --arch vit96 --images 256 --iters 100 --blocks 3   # the issue's held-out ViT size

``--arch vit96`` is a ViT with the built-in ViT's shape (dim 96, depth 6, 3 heads, patch 4, 32x32 images), random
weights: iterations there are bound by per-op overhead, not by matrix multiplies. To compare two source trees
under the same conditions, copy this script into the other tree's ``bench/`` and run both (it imports the
``quant`` package of the tree it lives in).

What is measured (each loss in its own child process, one after the other, so that ``ru_maxrss`` is that run's
peak resident memory and nothing runs concurrently):

1. ``reconstruct_`` with ``mse`` and with ``fisher_dplr`` (k = ``--rank``, 64 Fisher images) on the first
   ``--blocks`` blocks (patch embedding, blocks.0: the blocks with the *longest* tails, i.e. the most expensive
   snapshots), ``--iters`` iterations each, batch 32. Time per iteration = block time / iterations (everything
   included: batches, QDrop, snapshots, the before/after evaluation passes), as CPU time of the process (steady on
   a shared machine) and wall time.
2. Snapshot cost at blocks 0, 4, 8, 12: ``fisher_snapshot`` (current block on its cached input + float tail,
   gradient w.r.t. the block output only) against a full-model pass over the same images (quantized blocks 0..i
   from the images, float tail, the same backward), as the reference implementation does for every snapshot.
3. The whole-model DPLR/MSE ratio for other iteration counts, from the measured per-iteration training time and
   the snapshot times of all blocks (interpolated linearly in the block index between the measured points).
4. Peak memory: ``ru_maxrss`` of each child process (whole process: Python, torch, timm, PTQ and reconstruction),
   with the peak reached before reconstruction started (after PTQ) for reference. (tracemalloc does not see
   tensor memory, so it is not used.)

Timings on a shared CPU are noisy; the tables report what this run measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup(args):
    import timm
    import torch

    from quant.ptq import quantize_ptq

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.arch == "vit96":
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=args.img_size, patch_size=4,
                                  embed_dim=96, depth=6, num_heads=3, num_classes=10, global_pool="token").eval()
    else:
        model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=args.img_size).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    import inspect

    # range calibration: "minmax" (the per-tensor MSE/min-max search) by default, so that trees from before the
    # output-aware search (which have no such option) are compared on the same quantizer layout
    extra = {"range_search": args.range_search} if "range_search" in inspect.signature(quantize_ptq).parameters else {}
    qmodel, _ = quantize_ptq(model, images, method=args.ptq, wbits=4, abits=4, batch_size=32, **extra)
    return model, qmodel, images


def _child_reconstruct(args) -> dict:
    from quant.reconstruct import reconstruct_

    model, qmodel, images = _setup(args)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = reconstruct_(qmodel, model, images, loss=args.child, iters=args.iters, rank=args.rank, batch_size=32,
                          max_blocks=args.blocks, seed=0, fisher_images=args.fisher_images)
    seconds = time.perf_counter() - start
    return {
        "loss": args.child,
        "seconds": seconds,
        "blocks": [{"name": b.name, "seconds": b.seconds, "snapshot_seconds": b.snapshot_seconds,
                    "cpu_seconds": b.cpu_seconds, "snapshot_cpu_seconds": b.snapshot_cpu_seconds,
                    "iters": b.iters} for b in report.blocks],
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child_snapshot(args) -> dict:
    import torch
    import torch.nn.functional as F

    from quant.reconstruct.blocks import discover_blocks, map_batches, run_blocks
    from quant.reconstruct.fisher import fisher_snapshot

    model, qmodel, images = _setup(args)
    for p in list(model.parameters()) + list(qmodel.parameters()):
        p.requires_grad_(False)
    qblocks, fblocks = discover_blocks(qmodel), discover_blocks(model)
    imgs = images[: args.fisher_images]
    target = F.log_softmax(map_batches(model, imgs, 32) / 20.0, -1)
    rows = []
    x_q = imgs
    y_fp = imgs
    for i in range(len(qblocks) - 1):
        y_fp = map_batches(fblocks[i].forward, y_fp, 32)
        if i in args.snapshot_blocks:
            tail = fblocks[i + 1:]

            def tail_only(i=i, tail=tail, x_q=x_q, y_fp=y_fp):
                fisher_snapshot(qblocks[i].forward, lambda z: run_blocks(tail, z), x_q, y_fp, target, batch_size=32)

            def full_pass(i=i, tail=tail):  # images -> quantized blocks 0..i -> float tail, gradient at the block
                for s in range(0, len(imgs), 32):
                    z = run_blocks(qblocks[: i + 1], imgs[s:s + 32]).requires_grad_(True)
                    kl = F.kl_div(F.log_softmax(run_blocks(tail, z) / 20.0, -1), target[s:s + 32],
                                  log_target=True, reduction="sum")
                    torch.autograd.grad(kl, z)

            if not rows:
                tail_only()  # warm-up (allocator, first-call overheads)
            row = {"index": i, "name": qblocks[i].name}
            for label, fn in (("tail", tail_only), ("full", full_pass)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                row[f"{label}_s"], row[f"{label}_cpu"] = time.perf_counter() - t0, time.process_time() - c0
            rows.append(row)
        x_q = map_batches(qblocks[i].forward, x_q, 32)
    return {"snapshots": rows, "n_blocks": len(qblocks)}


def _run_child(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("child", "snapshot_blocks") and v is not None
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _interp(points: dict[int, float], n: int) -> list[float]:
    xs = sorted(points)
    values = []
    for i in range(n):
        lo = max([x for x in xs if x <= i], default=xs[0])
        hi = min([x for x in xs if x >= i], default=xs[-1])
        values.append(points[lo] if hi == lo else points[lo] + (points[hi] - points[lo]) * (i - lo) / (hi - lo))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("deit_tiny", "vit96"), default="deit_tiny")
    parser.add_argument("--img-size", type=int, default=None, help="default 224 (deit_tiny) or 32 (vit96)")
    parser.add_argument("--images", type=int, default=64, help="optimisation images (random normal)")
    parser.add_argument("--fisher-images", type=int, default=64)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--rank", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=2, help="reconstruct the first N blocks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ptq", default="dopq")
    parser.add_argument("--range-search", default="minmax", help="quantize_ptq range_search (where supported)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.img_size is None:
        args.img_size = 32 if args.arch == "vit96" else 224
    args.snapshot_blocks = (0, 4, 8, 12) if args.arch == "deit_tiny" else (0, 2, 4, 6)
    if args.child is not None:
        result = _child_snapshot(args) if args.child == "snapshot" else _child_reconstruct(args)
        print(json.dumps(result))
        return

    runs = {loss: _run_child(loss, args) for loss in ("mse", "fisher_dplr")}
    snap = _run_child("snapshot", args)

    arch = "deit_tiny_patch16_224" if args.arch == "deit_tiny" else "ViT dim 96 depth 6 patch 4"
    print(f"{arch} (random weights, img_size={args.img_size}), W4A4 dopq, {args.images} images, "
          f"batch 32, {args.iters} iterations/block, k={args.rank}, {args.fisher_images} Fisher images, "
          f"{args.threads} thread(s). CPU = this process's CPU time (steady on a shared machine); wall in brackets.\n")
    print("| block | mse ms/iter | dplr ms/iter | of which snapshots | dplr / mse (CPU) | dplr / mse (wall) |")
    print("|---|---|---|---|---|---|")
    mse_blocks, dplr_blocks = runs["mse"]["blocks"], runs["fisher_dplr"]["blocks"]

    def per_iter(b, key):
        return 1000 * b[key] / b["iters"]

    for m, d in zip(mse_blocks, dplr_blocks):
        print(f"| {m['name']} | {per_iter(m, 'cpu_seconds'):.0f} ({per_iter(m, 'seconds'):.0f}) | "
              f"{per_iter(d, 'cpu_seconds'):.0f} ({per_iter(d, 'seconds'):.0f}) | "
              f"{per_iter(d, 'snapshot_cpu_seconds'):.0f} ({per_iter(d, 'snapshot_seconds'):.0f}) | "
              f"{d['cpu_seconds'] / m['cpu_seconds']:.2f} | {d['seconds'] / m['seconds']:.2f} |")
    cm, cd = (sum(b["cpu_seconds"] for b in bl) for bl in (mse_blocks, dplr_blocks))
    wm, wd = (sum(b["seconds"] for b in bl) for bl in (mse_blocks, dplr_blocks))
    print(f"| first {len(mse_blocks)} blocks | | | | **{cd / cm:.2f}** | {wd / wm:.2f} |")

    print("\n| snapshot at block | tail-only pass s CPU (wall) | full-model pass s CPU (wall) | tail / full (CPU) |")
    print("|---|---|---|---|")
    for row in snap["snapshots"]:
        print(f"| {row['name']} ({row['index']}) | {row['tail_cpu']:.2f} ({row['tail_s']:.2f}) | "
              f"{row['full_cpu']:.2f} ({row['full_s']:.2f}) | {row['tail_cpu'] / row['full_cpu']:.2f} |")
    n_fisher = snap["n_blocks"] - 1
    tails = _interp({r["index"]: r["tail_cpu"] for r in snap["snapshots"]}, n_fisher)
    fulls = _interp({r["index"]: r["full_cpu"] for r in snap["snapshots"]}, n_fisher)
    print(f"| all {n_fisher} Fisher blocks (interpolated) | {sum(tails):.1f} | {sum(fulls):.1f} | "
          f"**{sum(tails) / sum(fulls):.2f}** |")

    # whole model: transformer-block iteration time from blocks.* (dplr: training without its snapshots)
    body = [b for b in mse_blocks if b["name"].startswith("blocks.")]
    body_d = [b for b in dplr_blocks if b["name"].startswith("blocks.")]
    if body and body_d:
        t_mse = sum(b["cpu_seconds"] for b in body) / sum(b["iters"] for b in body)
        t_dplr = sum(b["cpu_seconds"] - b["snapshot_cpu_seconds"] for b in body_d) / sum(b["iters"] for b in body_d)
        t_dplr = max(t_dplr, t_mse)  # the DPLR loss itself costs ~nothing; never credit timing noise to it
        n_body = snap["n_blocks"] - 2  # transformer blocks; patch embedding and head train much faster
        print(f"\nWhole model (extrapolated, CPU): {n_body} transformer blocks at {1000 * t_mse:.0f} ms/iter for both "
              f"losses (dplr training without snapshots measured <= mse, so mse's time is used), plus {args.rank} "
              f"snapshots of every block ({sum(tails):.1f} s per round of 13). Reference-style full-model snapshots: "
              f"{sum(fulls):.1f} s per round.\n")
        print("| iterations/block | dplr / mse (tail-only snapshots) | dplr / mse (full-model snapshots) |")
        print("|---|---|---|")
        for iters in sorted({args.iters, 100, 200, 500, 2000, 20000}):
            base = n_body * iters * t_mse
            train = n_body * iters * t_dplr
            print(f"| {iters} | {(train + args.rank * sum(tails)) / base:.2f} | "
                  f"{(train + args.rank * sum(fulls)) / base:.2f} |")

    print("\n| run | s CPU (wall) | process peak RSS MB (ru_maxrss) | peak RSS MB before reconstruction (PTQ) |")
    print("|---|---|---|---|")
    for loss, r in runs.items():
        cpu = sum(b["cpu_seconds"] for b in r["blocks"])
        print(f"| {loss} | {cpu:.0f} ({r['seconds']:.0f}) | {r['rss_peak_mb']:.0f} | {r['rss_before_mb']:.0f} |")


if __name__ == "__main__":
    main()
