"""The pipeline on a GPU worker: stage times, reconstruction cost per iteration, peak GPU memory, accuracy.

    python bench/gpu.py                      # CUDA (an H200 takes < 8 minutes)
    python bench/gpu.py --device cpu --quick # the same script, reduced, on a CPU (a functional check)

Models: the built-in ViT and Swin (digits, trained weights) and ``deit_small_patch16_224``,
``vit_base_patch16_224``, ``swin_small_patch4_window7_224`` with random weights at 224x224 on 128 random images.
Each runs ``quant.pipeline.run_pipeline`` (the code path of a job) with dopq, mixed precision at an average of
4 weight bits (``--budget``; W3A3-class settings with ``--wbits 3 --abits 3 --uniform``), FIMA-Q DPLR reconstruction
(k = 5) with ``--iters`` iterations per block.

Per model it prints the stage seconds (calibrate, sensitivity, allocate, reconstruct, evaluate), the milliseconds
per reconstruction iteration (transformer blocks, Fisher snapshots excluded; first block excluded as warm-up /
compilation), the seconds per Fisher snapshot, the peak GPU memory, and a projection of the reconstruction at the
``paper`` preset (20,000 iterations and 5 snapshots per block) from these measured per-block times. For the
built-ins it prints top-1 and KL on the device, next to a CPU run of the same settings (``--cpu-compare``,
default on for CUDA).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILTINS = ("builtin:vit-digits", "builtin:swin-digits")
TIMM_MODELS = ("deit_small_patch16_224", "vit_base_patch16_224", "swin_small_patch4_window7_224")


def _random_timm_inputs(name: str, folder: Path, images: int, img_size: int) -> tuple[str, str]:
    """A safetensors state_dict of ``name`` with random weights and a safetensors file of random images."""
    import safetensors.torch
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=img_size)
    weights = folder / f"{name}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = folder / f"{name}-images.safetensors"
    x = torch.randn(images, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    safetensors.torch.save_file({"images": x}, str(data))
    return str(weights), str(data)


def _run(model: str, device: str, args, folder: Path) -> dict:
    import torch

    from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
    from quant.pipeline import run_pipeline

    arch_kwargs: dict = {}
    if model.startswith("builtin:"):
        spec, data = ModelSpec(name=model), DataSpec(num_calibration=args.images, batch_size=32)
    else:
        img = args.img_size
        weights, source = _random_timm_inputs(model, folder, args.images, img)
        arch_kwargs = {"img_size": img}
        spec = ModelSpec(name=model, arch_kwargs=arch_kwargs, weights_path=weights)
        data = DataSpec(source=source, num_calibration=args.images, batch_size=32)
    method = {"quantizer": "dopq", "wbits": args.wbits, "abits": args.abits, "reconstruct": "fisher_dplr",
              "reconstruct_iters": args.iters, "reconstruct_rank": 5, "iterative_rounds": 1}
    if not args.uniform:
        method["budgets"] = {"wbits": float(args.wbits)}
    config = PipelineConfig(model=spec, data=data, method=MethodSpec(**method), device=device, preset="quick")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_pipeline(config)
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    rec = result.stages.get("reconstruct", {})
    blocks = rec.get("blocks", [])
    body = [b for b in blocks if b["kind"] == "block"][1:] or [b for b in blocks if b["kind"] == "block"]
    train = [(b["seconds"] - b["snapshot_seconds"]) / max(b["iters"], 1) for b in body if b["iters"]]
    ms_iter = 1000 * sum(train) / len(train) if train else float("nan")
    snaps = [b["snapshot_seconds"] / b["snapshots"] for b in blocks if b.get("snapshots")]
    snap_s = sum(snaps) / len(snaps) if snaps else 0.0
    # paper preset: 20,000 iterations and 5 snapshots for every block, at the measured per-block speeds
    projected = 0.0
    for b in blocks:
        per_iter = (b["seconds"] - b["snapshot_seconds"]) / max(b["iters"], 1)
        projected += 20000 * per_iter + (5 * b["snapshot_seconds"] / b["snapshots"] if b.get("snapshots") else 0.0)
    q = result.metrics["quantized"]
    return {"model": model, "device": device, "timings": result.timings, "ms_iter": ms_iter, "snap_s": snap_s,
            "peak_gib": peak, "projected_paper_min": projected / 60, "top1": q.get("top1"), "kl": q.get("kl"),
            "float_top1": result.metrics["float"].get("top1"), "total_s": total, "blocks": len(blocks)}


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="functional check: built-ins only (plus deit_small at --img-size), 32 images, 4 iters")
    parser.add_argument("--iters", type=int, default=None, help="reconstruction iterations per block (default 200)")
    parser.add_argument("--images", type=int, default=None, help="images per model (default 128)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--wbits", type=int, default=4)
    parser.add_argument("--abits", type=int, default=4)
    parser.add_argument("--uniform", action="store_true", help="uniform precision instead of a wbits budget")
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--cpu-compare", choices=("auto", "on", "off"), default="auto",
                        help="also run the built-ins on the CPU (auto: when --device is cuda)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; use --device cpu (with --quick for a short check)")
    args.iters = args.iters or (4 if args.quick else 200)
    args.images = args.images or (32 if args.quick else 128)
    if args.quick and args.img_size == 224:
        args.img_size = 64
    models = args.models.split(",") if args.models else (
        [*BUILTINS, "deit_small_patch16_224"] if args.quick else [*BUILTINS, *TIMM_MODELS])
    compare = args.cpu_compare == "on" or (args.cpu_compare == "auto" and args.device.startswith("cuda"))
    gpu_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"# bench/gpu.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  device={args.device} ({gpu_name}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(f"dopq W{args.wbits}A{args.abits} {'uniform' if args.uniform else 'mixed (wbits budget)'}, FIMA-Q DPLR k=5, "
          f"{args.iters} iterations/block, {args.images} images, batch 32\n")
    print("| model | device | calibrate s | sensitivity s | allocate s | reconstruct s | evaluate s | ms/iter | "
          "s/snapshot | peak GPU GiB | paper preset projected min | top-1 % (float) | KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpq-bench-gpu-") as tmp:
        for model in models:
            devices = [args.device] + (["cpu"] if compare and model in BUILTINS and args.device != "cpu" else [])
            for device in devices:
                row = _run(model, device, args, Path(tmp))
                rows.append(row)
                t = row["timings"]
                print(f"| {model} | {device} | {_fmt(t.get('calibrate'))} | {_fmt(t.get('sensitivity'))} | "
                      f"{_fmt(t.get('allocate'))} | {_fmt(t.get('reconstruct'))} | {_fmt(t.get('evaluate'))} | "
                      f"{_fmt(row['ms_iter'])} | {_fmt(row['snap_s'])} | {_fmt(row['peak_gib'])} | "
                      f"{_fmt(row['projected_paper_min'], '.1f')} | {_fmt(row['top1'])} ({_fmt(row['float_top1'])}) | "
                      f"{_fmt(row['kl'], '.4f')} |", flush=True)
    if compare:
        print("\n| built-in | KL device / KL CPU | top-1 device - CPU (points) |")
        print("|---|---|---|")
        for model in BUILTINS:
            pair = [r for r in rows if r["model"] == model]
            if len(pair) == 2 and pair[1]["kl"]:
                dev, cpu = pair
                print(f"| {model} | {dev['kl'] / cpu['kl']:.3f} | {dev['top1'] - cpu['top1']:+.2f} |")


if __name__ == "__main__":
    main()
