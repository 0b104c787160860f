"""The ``data-free`` section of ``bench/accuracy.py``: synthetic calibration images against real ones and noise.

For each built-in model, three calibration sets of equal count (default 128 images): the first images of the real
calibration split, Gaussian noise (the generator's seeded starting point: ``N(0, 1)`` in the normalised input
space, clamped to the pixel range) and synthetic images (``quant.synthetic``, PSAQ-ViT style, default steps). Each
set is written as an images file and goes through ``quant.pipeline.run_pipeline`` as calibration data (what a
resubmission with the synthetic-images artifact does), dopq at W4A4 and W3A3, PTQ only and with FIMA-Q
(``fisher_dplr``) reconstruction at ``--iters`` iterations per block; the PTQ and reconstruction jobs of one set share
their ``calibrate`` stage. Scored on the 500-image test split: top-1 and KL to the float model. Noise and synthetic
images carry the float model's predictions as labels (unused: uniform precision runs no sensitivity).

The paired bootstrap (2,000 resamples of the test images, seed 0, the per-image KL rows of both jobs on the same
resample) gives the mean KL difference synthetic - noise, its 95 % interval and the share of resamples where
synthetic is not better. Generation time: wall and process CPU seconds for the synthetic set on this machine's
threads (``torch.get_num_threads()``).

Usage: ``python bench/accuracy.py --section data-free [--models vit-digits] [--iters 100] [--images 128]
[--no-reconstruct] [--markdown]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.data import ImageSet, load_dataset, save_imageset
from quant.evaluate import predict_logits
from quant.models import build_model, model_info
from quant.pipeline import InMemoryStageStore, run_pipeline
from quant.synthetic import SyntheticSettings, synthesize_images

__all__ = ["paired_bootstrap", "section_datafree"]

SETS = ("real", "noise", "synthetic")
BITS = ((4, 4), (3, 3))
RESAMPLES = 2000


def kl_rows(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """Per-image KL(float || quantized) ``[N]`` in nats (the rows ``compare_logits`` averages)."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(quant_logits, 1), F.log_softmax(float_logits, 1), log_target=True,
                    reduction="none").sum(1)


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired rows ``[N]``, its 95 % bootstrap interval and the share of resamples whose mean
    difference is >= 0 (``a`` not better than ``b`` when lower is better)."""
    diff = (a - b).double()
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(diff), (resamples, len(diff)), generator=generator)
    means = diff[index].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"mean": float(diff.mean()), "low": low, "high": high, "p_not_better": float((means >= 0).double().mean())}


def _sets(model: str, images: int, steps: int | None) -> tuple[dict[str, ImageSet], dict]:
    name = f"builtin:{model}"
    info = model_info(name)
    float_model = build_model(name).eval()
    real = load_dataset("builtin:digits", split="calib", model_name=name, max_images=images)
    shape, classes = tuple(info["input_size"]), int(info["num_classes"])
    kwargs = {"mean": info["mean"], "std": info["std"], "num_classes": classes, "seed": 0}
    noise = synthesize_images(float_model, images, shape, settings=SyntheticSettings(steps=0), **kwargs)
    wall, cpu = time.perf_counter(), time.process_time()
    settings = SyntheticSettings() if steps is None else SyntheticSettings(steps=steps)
    synthetic = synthesize_images(float_model, images, shape, settings=settings, **kwargs)
    timing = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "steps": settings.steps,
              "threads": torch.get_num_threads(), "images": images,
              "entropy": (synthetic.history[0]["entropy"], synthetic.history[-1]["entropy"]),
              "noise_entropy": None}
    return ({"real": real, "noise": ImageSet(noise.images, noise.labels),
             "synthetic": ImageSet(synthetic.images, synthetic.labels)}, timing)


def _run(model: str, path: Path, bits: tuple[int, int], reconstruct: str, iters: int, store: InMemoryStageStore,
         images: int, test: ImageSet, float_logits: torch.Tensor, workdir: Path) -> dict:
    from quant import load_quantized

    config = PipelineConfig(
        model=ModelSpec(name=f"builtin:{model}"),
        data=DataSpec(source=str(path), eval_source="builtin:digits", num_calibration=images),
        method=MethodSpec(quantizer="dopq", wbits=bits[0], abits=bits[1], reconstruct=reconstruct,
                          reconstruct_iters=iters),
        seed=0, device="cpu", preset="quick")
    out = Path(tempfile.mkdtemp(dir=workdir))
    start = time.perf_counter()
    result = run_pipeline(config, store=store, output_dir=out)
    seconds = time.perf_counter() - start
    logits = predict_logits(load_quantized(out), test.images)
    m = result.metrics["quantized"]
    return {"top1": m["top1"], "kl": m["kl"], "rows": kl_rows(float_logits, logits), "seconds": seconds}


def section_datafree(model: str, markdown: bool, printer, *, iters: int = 100, images: int = 128,
                     steps: int | None = None, reconstruct: bool = True) -> dict:
    """Run the section for ``model`` and print its table with ``printer``; returns the numbers."""
    name = f"builtin:{model}"
    sets, timing = _sets(model, images, steps)
    print(f"  {model}: {images} synthetic images in {timing['wall']:.1f} s wall / {timing['cpu']:.1f} s CPU "
          f"({timing['threads']} threads, {timing['steps']} steps; entropy {timing['entropy'][0]:.3f} -> "
          f"{timing['entropy'][1]:.3f} nats)", flush=True)
    test = load_dataset("builtin:digits", split="test", model_name=name)
    float_logits = predict_logits(build_model(name).eval(), test.images)
    float_top1 = 100 * float((float_logits.argmax(1) == test.labels).float().mean())
    losses = ("none", "fisher_dplr") if reconstruct else ("none",)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mpq-datafree-") as tmp:
        workdir = Path(tmp)
        for label, imageset in sets.items():
            path = workdir / f"{label}.safetensors"
            save_imageset(path, imageset)
            for bits in BITS:
                blobs = workdir / f"blobs-{label}-{bits[0]}"
                ptq_store = InMemoryStageStore(workdir / f"w-{label}-{bits[0]}", blob_dir=blobs)
                for loss in losses:
                    store = ptq_store if loss == "none" else InMemoryStageStore(
                        workdir / f"r-{label}-{bits[0]}", outputs={"calibrate": ptq_store.outputs["calibrate"]},
                        blob_dir=blobs)
                    results[(label, bits, loss)] = _run(model, path, bits, loss, iters, store, images, test,
                                                        float_logits, workdir)
                    r = results[(label, bits, loss)]
                    print(f"  done {model} W{bits[0]}A{bits[1]} {loss} {label}: KL {r['kl']:.4f} top-1 "
                          f"{r['top1']:.2f} ({r['seconds']:.0f} s)", flush=True)
    rows = []
    for bits in BITS:
        for loss in losses:
            cell = {label: results[(label, bits, loss)] for label in SETS}
            boot = paired_bootstrap(cell["synthetic"]["rows"], cell["noise"]["rows"])
            ratio = cell["synthetic"]["kl"] / max(cell["real"]["kl"], 1e-12)
            rows.append([f"W{bits[0]}A{bits[1]}", "PTQ" if loss == "none" else f"FIMA-Q ({iters} it/block)",
                         *(f"{cell[s]['kl']:.4f}" for s in SETS), *(f"{cell[s]['top1']:.2f}" for s in SETS),
                         f"{ratio:.2f}",
                         f"{boot['mean']:+.4f} [{boot['low']:+.4f}, {boot['high']:+.4f}], p={boot['p_not_better']:.3f}"])
    printer(f"{model}: data-free calibration, {images} images each (float top-1 {float_top1:.2f} %; synthetic: "
            f"{timing['steps']} steps, {timing['wall']:.1f} s wall / {timing['cpu']:.1f} s CPU on "
            f"{timing['threads']} threads)",
            ["bits", "reconstruction", "KL real", "KL noise", "KL synthetic", "top-1 real", "top-1 noise",
             "top-1 synthetic", "KL synth / real", "KL synth - noise [95 % CI], p(not better)"], rows, markdown)
    return {"results": results, "timing": timing}
