"""The ``synthesize`` stage of a data-free job: calibration images generated from the float model.

When ``config.data.source`` is ``synthetic`` the stage runs :func:`quant.synthetic.synthesize_images` for
``num_calibration`` images (``data.synthetic.steps`` Adam steps on batches of ``data.batch_size`` images, noise seed
``data.synthetic.seed`` or the job's seed) and stores ``images`` float32 ``[N, 3, H, W]`` and ``labels`` int64 ``[N]`` (the float model's own
predictions) as one blob of the stage store. The blob holds exactly the tensors of an images artifact
(``quant.data.save_imageset``'s format), so a service can offer it for download and resubmission as calibration
data. A resumed run and a reallocation restore the images from the blob instead of generating them again.
For any other data source the stage is skipped.
"""

from __future__ import annotations

import torch

from ..config import SyntheticSpec
from ..data import ImageSet
from ..models import model_info
from ..synthetic import DEFAULT_STEPS, SyntheticSettings, synthesize_images
from .load import LoadedJob
from .runner import StageRunner
from .store import load_tensors, save_tensors

__all__ = ["accuracy_note", "scored_calibration", "synthesize_stage", "synthetic_report"]

_BLOB_VERSION = 1


def _settings(job: LoadedJob) -> tuple[int, int]:
    """``(steps, seed)`` of the job's synthesis."""
    spec = job.config.data.synthetic or SyntheticSpec()
    steps = DEFAULT_STEPS if spec.steps is None else spec.steps
    seed = job.config.seed if spec.seed is None else spec.seed
    return steps, seed


def _num_classes(job: LoadedJob) -> int:
    with torch.no_grad():
        probe = torch.zeros((1, *job.input_shape), device=job.device)
        return int(job.float_model.eval()(probe).shape[-1])


def synthesize_stage(runner: StageRunner, job: LoadedJob) -> None:
    """Run, reuse or skip the ``synthesize`` stage (module doc); sets ``job.calib`` for a data-free job."""
    config = job.config
    if not config.data.is_synthetic:
        runner.stage("synthesize", lambda: {"skipped": True, "reason": "the job has calibration data"})
        return
    count = config.data.num_calibration
    steps, seed = _settings(job)
    info = model_info(config.model.name, dict(config.model.arch_kwargs))
    found: dict[str, ImageSet] = {}

    def restore(output: dict):
        loaded = load_tensors(runner.store, output.get("images"))
        if loaded is None or loaded[1].get("version") != _BLOB_VERSION:
            return None
        tensors = loaded[0]
        images, labels = tensors.get("images"), tensors.get("labels")
        if images is None or labels is None or tuple(images.shape) != (count, *job.input_shape):
            return None
        found["set"] = ImageSet(images.float().contiguous(), labels.to(torch.int64))
        return found["set"]

    def body() -> dict:
        result = synthesize_images(
            job.float_model, count, job.input_shape, mean=info["mean"], std=info["std"],
            num_classes=_num_classes(job), seed=seed,
            settings=SyntheticSettings(steps=steps, batch_size=config.data.batch_size),
            progress=lambda fraction, message: runner.report("synthesize", fraction, message))
        found["set"] = ImageSet(result.images, result.labels)
        ref = save_tensors(runner.store, {"images": result.images, "labels": result.labels},
                           {"version": _BLOB_VERSION, "format": "mpq-imageset", "steps": steps, "seed": seed})
        entropy = [h["entropy"] for h in result.history]
        return {
            "images": ref, "count": count, "steps": steps, "seed": seed, "input_shape": list(job.input_shape),
            "generation_seconds": result.seconds,
            "entropy": {"first": entropy[0], "last": entropy[-1]} if entropy else None,
            "label_counts": torch.bincount(result.labels).tolist(),
            "labels": "the float model's predictions on the synthetic images",
        }

    runner.stage("synthesize", body, restore)
    job.calib = found["set"]


def scored_calibration(job: LoadedJob) -> ImageSet:
    """The calibration images as the ``evaluate`` stage may score them (when the job has no evaluation data):
    without labels when they are synthetic, since their labels are the float model's own (a fake accuracy)."""
    if job.calib is None:
        raise RuntimeError("no calibration images: the synthesize stage has not run")
    return ImageSet(job.calib.images) if job.config.data.is_synthetic else job.calib


def accuracy_note(job: LoadedJob) -> dict:
    """``{"accuracy": "..."}`` for the metrics of a data-free job without evaluation data; else ``{}``."""
    if job.config.data.is_synthetic and job.evaluation is None:
        return {"accuracy": "not measured: the job has no evaluation data (data-free calibration); KL and "
                            "agreement are measured on the synthetic images"}
    return {}


def synthetic_report(job: LoadedJob, outputs: dict[str, dict]) -> dict:
    """``{"synthetic": {...}}`` for the report of a data-free job (numbers and a PNG grid); else ``{}``."""
    stage = outputs.get("synthesize") or {}
    if not job.config.data.is_synthetic or job.calib is None or stage.get("skipped"):
        return {}
    from ..synthetic.preview import preview_report

    info = model_info(job.config.model.name, dict(job.config.model.arch_kwargs))
    return {"synthetic": preview_report(job.calib.images, job.calib.labels, info["mean"], info["std"], stage)}
