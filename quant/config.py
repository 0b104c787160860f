"""Plain configuration objects for a quantization run (shared by ``mpq quantize`` and service jobs).

Everything here is JSON-serialisable (pydantic v2) so a job spec can be stored in a database row and sent
between processes; no tensors or live models travel through these objects.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALLOWED_ABITS",
    "ALLOWED_WBITS",
    "BUDGET_KEYS",
    "LATENCY_BUDGETS",
    "STAGES",
    "SYNTHETIC_SOURCE",
    "DataSpec",
    "MethodSpec",
    "ModelSpec",
    "PipelineConfig",
    "SyntheticSpec",
]

#: Bit-widths a weight quantizer accepts (16 means "not quantized").
ALLOWED_WBITS = (2, 3, 4, 5, 6, 8, 16)
#: Bit-widths an activation quantizer accepts (16 means "not quantized").
ALLOWED_ABITS = (2, 3, 4, 5, 6, 8, 16)
#: Budget names understood by the allocation stage.
#: wbits: average weight bits (parameter-weighted); abits: average activation bits (element-weighted);
#: size: model weight bytes incl. scale/zero-point overhead; bops: bit-operations (MACs * wbits * abits);
#: latency: fraction of the measured fp32 model latency (batch 1); latency_ms: milliseconds per image (batch 1).
#: The two latency budgets need ``target="onnxruntime-cpu"`` (they are measured with onnxruntime).
BUDGET_KEYS = ("wbits", "abits", "size", "bops", "latency", "latency_ms")
#: Budgets that are measured on the deployment runtime.
LATENCY_BUDGETS = ("latency", "latency_ms")
#: Stage names of a pipeline run, in order.
STAGES = ("load", "synthesize", "calibrate", "sensitivity", "latency", "allocate", "reconstruct", "evaluate",
          "export")

#: ``DataSpec.source`` of a data-free job: the ``synthesize`` stage generates the calibration images.
SYNTHETIC_SOURCE = "synthetic"
#: Most synthetic images a job may ask for, and most Adam steps per batch.
MAX_SYNTHETIC_IMAGES = 100_000
MAX_SYNTHETIC_STEPS = 10_000

QuantizerMethod = Literal["minmax", "repq", "dopq"]
ReconstructMethod = Literal["none", "mse", "fisher_diag", "fisher_lr", "fisher_dplr"]
#: ``minmax``: today's fast range calibration; ``output``: output-aware search (quant.range_search);
#: ``auto``: ``output`` for repq/dopq, ``minmax`` for the minmax recipe.
RangeSearch = Literal["auto", "minmax", "output"]
#: ``sim``: simulated fake quantization, any bit pair; ``onnxruntime-cpu``: only the forms onnxruntime's CPU
#: provider executes (``quant.deploy.onnxruntime_cpu.forms``).
Target = Literal["sim", "onnxruntime-cpu"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """Which network to quantize.

    ``name`` is ``builtin:NAME`` (``builtin:vit-digits``, ``builtin:swin-digits``) or a timm architecture name
    (``vit_small_patch16_224``); ``arch_kwargs`` are passed to ``timm.create_model``; ``weights_path`` is a
    safetensors file holding the model's ``state_dict`` (required for timm names, ignored for built-ins).
    """

    name: str
    arch_kwargs: dict = Field(default_factory=dict)
    weights_path: str | None = None


class SyntheticSpec(_Frozen):
    """Data-free calibration (``quant.synthetic``): Adam ``steps`` per batch of images (None: the generator's
    default) and the noise ``seed`` (None: the job's seed). The number of images is ``DataSpec.num_calibration``."""

    steps: int | None = Field(default=None, ge=0, le=MAX_SYNTHETIC_STEPS)
    seed: int | None = Field(default=None, ge=0)


class DataSpec(_Frozen):
    """Calibration and evaluation images.

    ``source`` is ``builtin:digits``, a safetensors file with ``images`` float32 [N,3,H,W] (already
    normalised for the model) and optional ``labels`` int64 [N], or ``synthetic`` (:data:`SYNTHETIC_SOURCE`:
    ``num_calibration`` images generated from the float model, settings in ``synthetic``; their labels are the
    float model's own predictions). ``eval_source`` is the same kind of thing for evaluation; for
    ``builtin:digits`` the built-in test split is used when it is None.
    """

    source: str = "builtin:digits"
    eval_source: str | None = None
    num_calibration: int = Field(default=256, ge=1)
    batch_size: int = Field(default=64, ge=1)
    synthetic: SyntheticSpec | None = None

    @model_validator(mode="after")
    def _check_synthetic(self) -> DataSpec:
        if self.synthetic is not None and self.source != SYNTHETIC_SOURCE:
            raise ValueError(f"synthetic settings need source={SYNTHETIC_SOURCE!r}, got source={self.source!r}")
        if self.source == SYNTHETIC_SOURCE and self.num_calibration > MAX_SYNTHETIC_IMAGES:
            raise ValueError(f"at most {MAX_SYNTHETIC_IMAGES} synthetic images, got {self.num_calibration}")
        return self

    @property
    def is_synthetic(self) -> bool:
        """Whether the calibration images are generated (data-free job)."""
        return self.source == SYNTHETIC_SOURCE


class MethodSpec(_Frozen):
    """How to quantize.

    Without ``budgets`` every layer gets ``wbits``/``abits`` (uniform precision). With ``budgets`` (keys from
    ``BUDGET_KEYS``) the sensitivity + allocation stages choose per-layer bits among the candidates.
    ``fixed_layers`` maps layer names to ``[wbits, abits]`` that the allocation must keep.
    ``range_search`` picks the range calibration (``auto``/``minmax``/``output``, see ``quant.ptq``).

    ``target`` is the runtime the model deploys to: ``sim`` (default, simulated fake quantization) or
    ``onnxruntime-cpu``, where every layer takes one of the forms onnxruntime executes (``quant.deploy.onnxruntime_cpu.forms``:
    its ``(wbits, abits)`` keys are the only bit pairs allowed, ``forms`` restricts them by name, empty = all)
    with block-wise weights in blocks of ``block_size`` along the input dimension. ``sweep`` > 0 also solves
    that many points of the Pareto curve of the budget ``sweep_budget`` (default: the first budget);
    ``sweep_measure`` of them are exported and measured on onnxruntime.
    """

    quantizer: QuantizerMethod = "dopq"
    wbits: int = 4
    abits: int = 4
    head_bits: int | None = 8
    budgets: dict[str, float] = Field(default_factory=dict)
    candidate_wbits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    candidate_abits: tuple[int, ...] = (3, 4, 5, 6, 8)
    fixed_layers: dict[str, tuple[int, int]] = Field(default_factory=dict)
    type_aware: bool = True
    iterative_rounds: int = Field(default=0, ge=0)
    reconstruct: ReconstructMethod = "none"
    reconstruct_iters: int = Field(default=500, ge=1)
    reconstruct_rank: int = Field(default=5, ge=1)
    range_search: RangeSearch = "auto"
    target: Target = "sim"
    block_size: int = 32
    forms: tuple[str, ...] = ()
    sweep: int = 0
    sweep_budget: str | None = None
    sweep_measure: int = Field(default=3, ge=0)

    @field_validator("block_size")
    @classmethod
    def _check_block_size(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two >= 16 (16, 32, 64, 128...), got {value}")
        return value

    @field_validator("forms")
    @classmethod
    def _check_forms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .target import FORM_NAMES

        unknown = [name for name in value if name not in FORM_NAMES]
        if unknown:
            raise ValueError(f"unknown forms {unknown}; forms are {', '.join(FORM_NAMES)}")
        return tuple(dict.fromkeys(value))

    @field_validator("sweep")
    @classmethod
    def _check_sweep(cls, value: int) -> int:
        if value != 0 and not 2 <= value <= 256:
            raise ValueError(f"sweep must be 0 (no Pareto sweep) or a number of points in 2..256, got {value}")
        return value

    @field_validator("wbits")
    @classmethod
    def _check_wbits(cls, value: int) -> int:
        if value not in ALLOWED_WBITS:
            raise ValueError(f"wbits must be one of {ALLOWED_WBITS}, got {value}")
        return value

    @field_validator("abits")
    @classmethod
    def _check_abits(cls, value: int) -> int:
        if value not in ALLOWED_ABITS:
            raise ValueError(f"abits must be one of {ALLOWED_ABITS}, got {value}")
        return value

    @field_validator("budgets")
    @classmethod
    def _check_budgets(cls, value: dict[str, float]) -> dict[str, float]:
        for key, limit in value.items():
            if key not in BUDGET_KEYS:
                raise ValueError(f"unknown budget {key!r}; known budgets: {', '.join(BUDGET_KEYS)}")
            if not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"budget {key!r} must be a positive finite number, got {limit}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _target_defaults(cls, data):
        """On a runtime target the uniform default is the int8 form: (4, 4) is not something it executes."""
        runtime = isinstance(data, dict) and data.get("target", "sim") != "sim"
        if runtime and "wbits" not in data and "abits" not in data:
            data = {**data, "wbits": 8, "abits": 8}
        return data

    @model_validator(mode="after")
    def _check_target(self) -> MethodSpec:
        if self.sweep_budget is not None and self.sweep_budget not in self.budgets:
            known = ", ".join(self.budgets) or "none given"
            raise ValueError(f"sweep_budget {self.sweep_budget!r} must be one of the budgets ({known})")
        if self.sweep and not self.budgets:
            raise ValueError("sweep needs at least one budget to sweep (set budgets)")
        if self.target == "sim":
            measured = [key for key in LATENCY_BUDGETS if key in self.budgets]
            if measured:
                raise ValueError(f"budgets {measured} are measured on onnxruntime: set target='onnxruntime-cpu'")
            if self.forms:
                raise ValueError("forms restrict the onnxruntime-cpu forms: set target='onnxruntime-cpu' or "
                                 "leave forms empty")
            return self
        self._check_executable()
        return self

    def _check_executable(self) -> None:
        """In a target mode every bit pair the job names must be a form the target executes (``forms`` restricts
        only the allocation's candidates, not the pairs given explicitly)."""
        from .target import FormError, form_for_bits

        def check(what: str, component: str, wbits: int, abits: int) -> None:
            try:
                form_for_bits(self.target, component, wbits, abits)
            except FormError as exc:
                raise ValueError(f"{what}: {exc}") from None

        if not self.budgets:
            check(f"wbits/abits ({self.wbits}, {self.abits})", "linear", self.wbits, self.abits)
            patch_fixed = any(name.endswith("patch_embed.proj") for name in self.fixed_layers)
            if self.head_bits is None and not patch_fixed:  # the patch embedding takes wbits/abits too
                check(f"wbits/abits ({self.wbits}, {self.abits}) with head_bits None", "patch_embed", self.wbits,
                      self.abits)
        if self.head_bits is not None:
            for component in ("patch_embed", "head"):
                check(f"head_bits {self.head_bits} (as ({self.head_bits}, {self.head_bits}) for the {component})",
                      component, self.head_bits, self.head_bits)
        for name, (wbits, abits) in self.fixed_layers.items():
            # the layer's kind is known only with the model (quant.validation checks it); here: any kind
            errors = []
            for component in ("linear", "patch_embed", "matmul_qk"):
                try:
                    form_for_bits(self.target, component, wbits, abits)
                    break
                except FormError as exc:
                    errors.append(str(exc))
            else:
                raise ValueError(f"fixed layer {name!r} ({wbits}, {abits}): no layer kind of target "
                                 f"{self.target!r} executes it; {errors[0]}")


class PipelineConfig(_Frozen):
    """A whole quantization run: model, data, method, seed and device (``auto`` picks CUDA when present)."""

    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    seed: int = 0
    device: str = "auto"
    export_onnx: bool = False
    #: ``auto`` (paper on CUDA, quick elsewhere), ``quick`` or ``paper``; see ``quant.presets``. Settings given
    #: explicitly in ``method``/``data`` override the preset.
    preset: Literal["auto", "quick", "paper"] = "auto"
