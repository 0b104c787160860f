"""Plain configuration objects for a quantization run (shared by ``mpq quantize`` and service jobs).

Everything here is JSON-serialisable (pydantic v2) so a job spec can be stored in a database row and sent
between processes; no tensors or live models travel through these objects.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ALLOWED_ABITS",
    "ALLOWED_WBITS",
    "BUDGET_KEYS",
    "STAGES",
    "DataSpec",
    "MethodSpec",
    "ModelSpec",
    "PipelineConfig",
]

#: Bit-widths a weight quantizer accepts (16 means "not quantized").
ALLOWED_WBITS = (2, 3, 4, 5, 6, 8, 16)
#: Bit-widths an activation quantizer accepts (16 means "not quantized").
ALLOWED_ABITS = (2, 3, 4, 5, 6, 8, 16)
#: Budget names understood by the allocation stage.
#: wbits: average weight bits (parameter-weighted); abits: average activation bits (element-weighted);
#: size: model weight bytes incl. scale/zero-point overhead; bops: bit-operations (MACs * wbits * abits).
BUDGET_KEYS = ("wbits", "abits", "size", "bops")
#: Stage names of a pipeline run, in order.
STAGES = ("load", "sensitivity", "allocate", "reconstruct", "evaluate", "export")

QuantizerMethod = Literal["minmax", "repq", "dopq"]
ReconstructMethod = Literal["none", "mse", "fisher_diag", "fisher_lr", "fisher_dplr"]
#: ``minmax``: today's fast range calibration; ``output``: output-aware search (quant.range_search);
#: ``auto``: ``output`` for repq/dopq, ``minmax`` for the minmax recipe.
RangeSearch = Literal["auto", "minmax", "output"]


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


class DataSpec(_Frozen):
    """Calibration and evaluation images.

    ``source`` is ``builtin:digits`` or a safetensors file with ``images`` float32 [N,3,H,W] (already
    normalised for the model) and optional ``labels`` int64 [N]. ``eval_source`` is the same kind of thing for
    evaluation; for ``builtin:digits`` the built-in test split is used when it is None.
    """

    source: str = "builtin:digits"
    eval_source: str | None = None
    num_calibration: int = Field(default=256, ge=1)
    batch_size: int = Field(default=64, ge=1)


class MethodSpec(_Frozen):
    """How to quantize.

    Without ``budgets`` every layer gets ``wbits``/``abits`` (uniform precision). With ``budgets`` (keys from
    ``BUDGET_KEYS``) the sensitivity + allocation stages choose per-layer bits among the candidates.
    ``fixed_layers`` maps layer names to ``[wbits, abits]`` that the allocation must keep.
    ``range_search`` picks the range calibration (``auto``/``minmax``/``output``, see ``quant.ptq``).
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
