"""Accuracy benchmark on the built-in digits models: every number goes through ``quant.pipeline.run_pipeline``.

Sections (``--section``, default all):
- ``ptq``: method (minmax, repq, dopq) x bits (W8A8, W6A6, W4A4, W3A3), uniform precision (patch embedding and
  head at 8 bits).
- ``mixed``: LampQ mixed precision vs uniform W3A4/W4A4 at average weight bits 2.5/3/3.5/4 and at the uniform jobs'
  own averages, predicted vs measured KL, without the iterative update and with ``range_search=minmax``
  (``bench/mixed.py``).
- ``reconstruct``: FIMA-Q (fisher_dplr) vs MSE reconstruction vs none, at W4A4 and W3A3.
- ``data-free``: synthetic calibration images (``quant.synthetic``) vs real images vs Gaussian noise, dopq W4A4/W3A3,
  PTQ and FIMA-Q, with a paired bootstrap and the generation time (``bench/datafree.py``; not part of ``all``).
- ``calib``: range calibration ``range_search="minmax"`` (fast) vs ``"output"`` (output-aware search), recipes
  minmax/repq/dopq at W4A4 and W3A3: top-1, KL, test cross-entropy, calibration wall and CPU seconds, and the
  KL change with its noise (``--seeds``: the output search is repeated on other calibration subsets; the
  test-set noise is the paired bootstrap standard error of the KL difference over the 500 test images).

Usage: ``.venv/bin/python bench/accuracy.py [--models vit-digits,swin-digits] [--section ptq] [--markdown]``
(``--section calib --bits 4,3 --methods minmax,repq,dopq --seeds 1``).
Test split: 500 images; calibration: the built-in 256-image calibration split.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see quant/__init__.py)

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.pipeline import run_pipeline

BITS = ((8, 8), (6, 6), (4, 4), (3, 3))
METHODS = ("minmax", "repq", "dopq")


def _config(model: str, **method) -> PipelineConfig:
    return PipelineConfig(
        model=ModelSpec(name=f"builtin:{model}"),
        data=DataSpec(num_calibration=256),
        method=MethodSpec(**method),
        seed=0,
        device="cpu",
    )


def _row(label: str, result, extra: str = "") -> list[str]:
    m = result.metrics
    return [
        label,
        f"{m['quantized']['top1']:.2f}",
        f"{m['quantized']['kl']:.4f}",
        f"{m['quantized']['agreement']:.2f}",
        f"{m['bits']['weights_avg']:.2f}",
        f"{m['bits']['activations_avg']:.2f}",
        extra,
    ]


def _print(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    print(f"\n### {title}\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


HEADER = ["setting", "top-1 %", "KL", "agree %", "avg W bits", "avg A bits", "note"]


def section_ptq(model: str, markdown: bool) -> None:
    rows = []
    float_top1 = None
    for wbits, abits in BITS:
        for method in METHODS:
            start = time.perf_counter()
            result = run_pipeline(_config(model, quantizer=method, wbits=wbits, abits=abits))
            float_top1 = result.metrics["float"]["top1"]
            rows.append(_row(f"W{wbits}A{abits} {method}", result, f"{time.perf_counter() - start:.1f}s"))
    _print(f"{model}: PTQ methods x bits (float top-1 {float_top1:.2f}%)", HEADER, rows, markdown)


def section_reconstruct(model: str, markdown: bool, iters: int) -> None:
    rows = []
    for wbits, abits in ((4, 4), (3, 3)):
        for loss in ("none", "mse", "fisher_dplr"):
            start = time.perf_counter()
            result = run_pipeline(
                _config(
                    model,
                    quantizer="dopq",
                    wbits=wbits,
                    abits=abits,
                    reconstruct=loss,
                    reconstruct_iters=iters,
                )
            )
            rows.append(_row(f"W{wbits}A{abits} {loss}", result, f"{time.perf_counter() - start:.1f}s"))
    _print(f"{model}: reconstruction ({iters} iterations per block)", HEADER, rows, markdown)


def _kl_rows(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """Per-image KL(float || quantized) [N] in nats."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(quant_logits, 1), F.log_softmax(float_logits, 1), log_target=True,
                    reduction="none").sum(1)


def _calibrated(model: str, method: str, wbits: int, abits: int, search: str, subset: int, images, test,
                float_logits) -> dict:
    import torch.nn.functional as F

    from quant.evaluate import compare_logits, predict_logits
    from quant.ptq import quantize_ptq

    n = len(images)
    calib = images if subset == 0 else torch.roll(images, shifts=subset * n // 4, dims=0)[: n // 2 * 2]
    torch.manual_seed(subset)
    wall, cpu = time.perf_counter(), time.process_time()
    qmodel, _ = quantize_ptq(_FLOAT[model], calib, method=method, wbits=wbits, abits=abits, range_search=search)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    logits = predict_logits(qmodel, test.images)
    cmp = compare_logits(float_logits, logits, test.labels)
    return {"top1": cmp["top1"], "kl": cmp["kl"], "ce": F.cross_entropy(logits, test.labels).item(),
            "wall": wall, "cpu": cpu, "kl_rows": _kl_rows(float_logits, logits)}


_FLOAT: dict = {}


def section_calib(model: str, markdown: bool, bits: list[int], methods: list[str], seeds: int) -> None:
    from quant.data import load_dataset
    from quant.evaluate import predict_logits
    from quant.models import build_model

    _FLOAT[model] = build_model(f"builtin:{model}")
    calib = load_dataset("builtin:digits", split="calib", model_name=f"builtin:{model}")
    test = load_dataset("builtin:digits", split="test", model_name=f"builtin:{model}")
    float_logits = predict_logits(_FLOAT[model], test.images)
    generator = torch.Generator().manual_seed(0)
    boot = torch.randint(0, len(test), (200, len(test)), generator=generator)
    rows = []
    for b in bits:
        for method in methods:
            old = _calibrated(model, method, b, b, "minmax", 0, calib.images, test, float_logits)
            new = _calibrated(model, method, b, b, "output", 0, calib.images, test, float_logits)
            diff = new["kl_rows"] - old["kl_rows"]
            test_se = float(diff[boot].mean(1).std())
            others = [_calibrated(model, method, b, b, "output", s, calib.images, test, float_logits)["kl"]
                      for s in range(1, seeds + 1)]
            spread = f"{min([new['kl'], *others]):.4f}-{max([new['kl'], *others]):.4f}" if others else "-"
            for label, r in (("minmax", old), ("output", new)):
                rows.append([f"W{b}A{b} {method}", label, f"{r['top1']:.2f}", f"{r['kl']:.4f}", f"{r['ce']:.4f}",
                             f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
                             "" if label == "minmax" else f"{100 * (new['kl'] / old['kl'] - 1):+.0f} % "
                             f"(se {test_se:.4f}; KL over subsets {spread})"])
            print(f"  done W{b}A{b} {method}", flush=True)
    _print(f"{model}: range calibration, fast (minmax) vs output-aware search (float top-1 "
           f"{100 * float((float_logits.argmax(1) == test.labels).float().mean()):.2f} %)",
           ["bits recipe", "range_search", "top-1 %", "KL", "test CE", "calib s", "calib CPU s", "KL change"],
           rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-digits,swin-digits")
    parser.add_argument("--section", choices=("ptq", "mixed", "reconstruct", "calib", "data-free", "all"),
                        default="all")
    parser.add_argument("--images", type=int, default=128, help="data-free section: images per calibration set")
    parser.add_argument("--steps", type=int, default=None, help="data-free section: Adam steps (generator default)")
    parser.add_argument("--no-reconstruct", action="store_true", help="data-free section: PTQ rows only")
    parser.add_argument("--bits", default="4,3", help="calib section: uniform bit-widths (WnAn)")
    parser.add_argument("--methods", default="minmax,repq,dopq", help="calib section: recipes")
    parser.add_argument("--seeds", type=int, default=0, help="calib section: extra calibration subsets")
    parser.add_argument("--iters", type=int, default=300, help="reconstruction iterations per block")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for model in args.models.split(","):
        if args.section in ("ptq", "all"):
            section_ptq(model, args.markdown)
        if args.section in ("mixed", "all"):
            from mixed import section_mixed

            section_mixed(model, args.markdown, _print)
        if args.section in ("reconstruct", "all"):
            section_reconstruct(model, args.markdown, args.iters)
        if args.section == "data-free":
            from datafree import section_datafree

            section_datafree(model, args.markdown, _print, iters=args.iters, images=args.images, steps=args.steps,
                             reconstruct=not args.no_reconstruct)
        if args.section in ("calib", "all"):
            section_calib(model, args.markdown, [int(b) for b in args.bits.split(",")], args.methods.split(","),
                          args.seeds)


if __name__ == "__main__":
    main()
