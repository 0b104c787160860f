"""Cost of the LampQ sensitivity pass relative to one plain forward+backward pass over the same images.

Model: ``deit_tiny_patch16_224`` with random weights (no download), calibration images random [N,3,224,224].
"Plain" = forward + backward of the cross-entropy over the images in the same batches, parameters requiring
grad (what any training step costs). "Sensitivity" = ``quant.sensitivity.compute_sensitivity`` with 6 weight and
5 activation candidates: the Fisher pass (per-image weight gradients, activation Omegas), Omega for every
candidate; reported with and without the type-factor calibration (8 extra forward passes on a subset).
Runs are interleaved and repeated; the table shows medians and the ratio target (<= 1.5).

Usage: ``.venv/bin/python bench/sensitivity.py [--images 32] [--batch 16] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch
import torch.nn.functional as F

import quant  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from quant.ptq import quantize_ptq
from quant.sensitivity import compute_sensitivity


def plain_pass(model, images, labels, batch):
    for start in range(0, len(images), batch):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images[start : start + batch]), labels[start : start + batch]).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    images = torch.randn(args.images, 3, 224, 224)
    labels = torch.randint(0, 1000, (args.images,))
    qmodel, _ = quantize_ptq(model, images[:8], method="minmax", wbits=4, abits=4)
    compute_sensitivity(qmodel, images[:4], labels[:4], type_aware=False, batch_size=4)  # warm caches
    times = {"plain": [], "fisher": [], "fisher+types": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain_pass(model, images, labels, args.batch)
        times["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        compute_sensitivity(qmodel, images, labels, type_aware=False, batch_size=args.batch)
        times["fisher"].append(time.perf_counter() - start)
        start = time.perf_counter()
        compute_sensitivity(qmodel, images, labels, type_aware=True, batch_size=args.batch, alpha_images=8)
        times["fisher+types"].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"deit_tiny_patch16_224, {args.images} images of 224x224, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| pass | seconds (median) | ratio to plain fwd+bwd | target |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratio = statistics.median(values) / base
        target = "-" if name == "plain" else ("<= 1.5 met" if ratio <= 1.5 else "<= 1.5 NOT met")
        print(f"| {name} | {statistics.median(values):.2f} | {ratio:.2f} | {target} |")


if __name__ == "__main__":
    main()
