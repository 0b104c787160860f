"""Request/response schemas of the job endpoints (``JobCreate`` / ``JobPublic`` / ``JobsPublic`` families).

A job request names artifacts by id; the worker turns the stored request into a
:class:`quant.config.PipelineConfig` with local paths (see :mod:`service.job.config`). The ``method`` block *is*
:class:`quant.config.MethodSpec`, so the API accepts exactly what ``mpq quantize`` accepts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quant.config import BUDGET_KEYS, MAX_SYNTHETIC_IMAGES, MAX_SYNTHETIC_STEPS, MethodSpec
from service.models import JobStatus, StageStatus
from service.schemas import Schema

__all__ = [
    "DataIn",
    "JobCreate",
    "JobPublic",
    "JobReport",
    "JobSummary",
    "JobsPublic",
    "LayerPublic",
    "ModelIn",
    "ParetoPoint",
    "ParetoPublic",
    "ParetoRequest",
    "ReallocateRequest",
    "StagePublic",
    "SyntheticIn",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelIn(_Strict):
    """The network: a built-in model or a timm architecture with uploaded weights."""

    name: str = Field(
        min_length=1,
        max_length=200,
        description="builtin:vit-digits, builtin:swin-digits or a timm architecture name",
        examples=["builtin:vit-digits", "vit_small_patch16_224"],
    )
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="timm.create_model overrides (img_size, depth, num_classes, ...)"
    )
    weights_artifact_id: uuid.UUID | None = Field(
        default=None, description="A weights artifact (the model's state_dict); required for timm names"
    )


class SyntheticIn(_Strict):
    """Data-free calibration: images generated from the float model (PSAQ-ViT style, ``docs/data-free.md``).

    The job stores them as an images artifact of the tenant (its id in the report's ``synthetic_images``), which a
    later job can name as ``data.artifact_id``. Their labels are the float model's own predictions."""

    images: int = Field(ge=1, le=MAX_SYNTHETIC_IMAGES, description="How many images to generate", examples=[128])
    steps: int | None = Field(
        default=None, ge=0, le=MAX_SYNTHETIC_STEPS, description="Adam steps per batch (default: the generator's, 30)"
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Noise seed (default: the job's seed)")


class DataIn(_Strict):
    """Calibration (and optional evaluation) images: at most one source each; built-in digits by default."""

    builtin: str | None = Field(default=None, max_length=100, description="e.g. builtin:digits")
    artifact_id: uuid.UUID | None = Field(default=None, description="An images artifact for calibration")
    folder: str | None = Field(
        default=None, max_length=1000, description="An image folder relative to the worker's MPQ_DATA_ROOT"
    )
    eval_artifact_id: uuid.UUID | None = Field(default=None, description="An images artifact with labels")
    eval_folder: str | None = Field(default=None, max_length=1000, description="Relative to MPQ_DATA_ROOT")
    synthetic: SyntheticIn | None = Field(
        default=None, description="Generate the calibration images from the model instead (data-free job)"
    )
    num_calibration: int = Field(default=256, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=4096)

    @model_validator(mode="after")
    def _one_source(self) -> DataIn:
        if sum(x is not None for x in (self.builtin, self.artifact_id, self.folder, self.synthetic)) > 1:
            raise ValueError("give at most one of data.builtin, data.artifact_id, data.folder, data.synthetic")
        if self.synthetic is not None and "num_calibration" in self.model_fields_set:
            raise ValueError("a data-free job gives its image count as data.synthetic.images, not data.num_calibration")
        if self.eval_artifact_id is not None and self.eval_folder is not None:
            raise ValueError("give at most one of data.eval_artifact_id, data.eval_folder")
        return self


class JobCreate(_Strict):
    """A quantization job request."""

    name: str = Field(default="", max_length=200)
    model: ModelIn
    data: DataIn = Field(default_factory=DataIn)
    method: MethodSpec = Field(default_factory=MethodSpec)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")
    #: ``quick`` (CPU demos), ``paper`` (the methods at their published settings) or ``auto`` (paper on a CUDA
    #: worker, quick elsewhere); settings given explicitly in ``method``/``data`` override it (``quant.presets``).
    preset: Literal["auto", "quick", "paper"] = "auto"
    export_onnx: bool = Field(
        default=False,
        description=(
            "Also write model.onnx into the bundle: opset 21 with com.microsoft ops; for target "
            "onnxruntime-cpu each layer is exported in its chosen form (QDQ int8, MatMulNBits w8/w4/w4a8) and "
            "runs in onnxruntime as measured"
        ),
    )


class ReallocateRequest(_Strict):
    """A new budget for a job whose sensitivities (and, for target onnxruntime-cpu, latency table) are reused:
    neither the sensitivity nor the latency stage runs again."""

    budgets: dict[str, float] = Field(
        min_length=1,
        description=(
            f"New budgets; keys among {', '.join(BUDGET_KEYS)} (latency: fraction of the measured fp32 "
            "latency; latency_ms: milliseconds per image at batch 1; both need target onnxruntime-cpu)"
        ),
        examples=[{"wbits": 3.5}, {"latency": 0.6}],
    )
    fixed_layers: dict[str, tuple[int, int]] | None = Field(
        default=None, description="Replaces the parent's fixed layers when given"
    )
    name: str = Field(default="", max_length=200)


class ParetoRequest(_Strict):
    """A budget sweep over a finished job's stored sensitivity (and latency) tables: one optimal allocation per
    budget value, solved again from the tables (no model is loaded, nothing is measured)."""

    budget: str = Field(
        description=f"The budget to sweep, one of {', '.join(BUDGET_KEYS)}",
        examples=["wbits", "latency_ms"],
    )
    points: int = Field(
        default=32,
        ge=2,
        le=256,
        description="Number of budget values the sweep solves, across the budget's achievable range "
        "(ignored when values are given)",
    )
    values: list[float] | None = Field(
        default=None, min_length=1, max_length=256, description="Explicit budget values to solve (each > 0)"
    )
    time_limit: float | None = Field(
        default=None,
        gt=0,
        description="Solver seconds per point (default 5; capped by MPQ_ALLOCATE_MAX_TIME_LIMIT)",
    )

    @model_validator(mode="after")
    def _check(self) -> ParetoRequest:
        if self.budget not in BUDGET_KEYS:
            raise ValueError(f"unknown budget {self.budget!r}; known budgets: {', '.join(BUDGET_KEYS)}")
        if self.values is not None and any(not value > 0 for value in self.values):
            raise ValueError("every value must be a positive finite number")
        return self


class ParetoPoint(BaseModel):
    """One solved budget value (in the curve's ``unit``): its objective (summed predicted loss increase, nats per
    image; None when the value is infeasible), the solver status, and for the optimal allocation its average
    weight bits and, for jobs with a latency table, its predicted latency (ms) and number of layers per form."""

    model_config = ConfigDict(extra="allow")

    budget: str
    value: float
    objective: float | None = None
    status: str
    chosen: bool = False
    predicted_latency_ms: float | None = None
    wbits_avg: float | None = None
    forms: dict[str, int] | None = None


class ParetoPublic(BaseModel):
    """The Pareto curve of one budget (``unit`` of its values); ``chosen`` is the value the job itself used."""

    model_config = ConfigDict(extra="allow")

    job_id: uuid.UUID
    budget: str
    unit: str
    points: list[ParetoPoint]
    chosen: float | None = None


class StagePublic(Schema):
    name: str
    status: StageStatus
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    reused_from: uuid.UUID | None = None
    output: dict[str, Any] | None = None


class JobSummary(Schema):
    """A job without its stage outputs (list view)."""

    id: uuid.UUID
    name: str
    status: JobStatus
    parent_id: uuid.UUID | None
    progress: float
    stage: str | None
    message: str
    cancel_requested: bool
    error: dict[str, Any] | None
    metrics: dict[str, Any] | None
    warnings: list[dict[str, Any]] | None = None
    attempts: int
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class JobPublic(JobSummary):
    """A job with its request and stages (each with start/end time and output)."""

    spec: dict[str, Any]
    heartbeat_at: dt.datetime | None
    stages: list[StagePublic]
    bundle_sha256: str | None
    bundle_size: int | None


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``after`` for the next page."""

    data: list[JobSummary]
    has_more: bool
    next_cursor: str | None


class LayerPublic(Schema):
    name: str
    wbits: int | None
    abits: int | None
    sensitivity: float | None
    details: dict[str, Any]


class JobReport(BaseModel):
    """The result of a succeeded job: the pipeline's report plus per-layer bits."""

    job_id: uuid.UUID
    status: JobStatus
    result: dict[str, Any]
    layers: list[LayerPublic]
    stages: list[StagePublic]
