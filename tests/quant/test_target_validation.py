"""Deployment-target settings of a job: MethodSpec field rules and their messages, and the submit-time check of
fixed layers against the forms their kind can execute."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quant.config import BUDGET_KEYS, STAGES, MethodSpec, PipelineConfig
from quant.errors import PipelineInputError
from quant.validation import validate_config

ORT = "onnxruntime-cpu"


def test_contract_constants():
    assert STAGES == ("load", "synthesize", "calibrate", "sensitivity", "latency", "allocate", "reconstruct",
                      "evaluate", "export")
    assert BUDGET_KEYS[-2:] == ("latency", "latency_ms")
    method = MethodSpec()
    assert (method.target, method.block_size, method.forms, method.sweep, method.sweep_budget,
            method.sweep_measure) == ("sim", 32, (), 0, None, 3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"block_size": 24}, "block_size must be a power of two >= 16"),
    ({"block_size": 8}, "block_size must be a power of two >= 16"),
    ({"forms": ("w4", "int4")}, "unknown forms ['int4']; forms are fp32, int8, w8, w4, w4a8"),
    ({"sweep": 1}, "sweep must be 0 (no Pareto sweep) or a number of points in 2..256"),
    ({"sweep": 257, "budgets": {"wbits": 4}}, "sweep must be 0"),
    ({"sweep": 8}, "sweep needs at least one budget"),
    ({"sweep": 8, "budgets": {"wbits": 4}, "sweep_budget": "size"},
     "sweep_budget 'size' must be one of the budgets (wbits)"),
    ({"budgets": {"latency": 0.5}}, "budgets ['latency'] are measured on onnxruntime: set target='onnxruntime-cpu'"),
    ({"budgets": {"latency_ms": 3.0}}, "set target='onnxruntime-cpu'"),
    ({"forms": ("w4",)}, "forms restrict the onnxruntime-cpu forms"),
    ({"target": "tensorrt"}, "Input should be 'sim' or 'onnxruntime-cpu'"),
    ({"target": ORT, "wbits": 4, "abits": 4},
     ("wbits/abits (4, 4): target 'onnxruntime-cpu' cannot execute a linear layer at (wbits=4, "
      "abits=4); its forms are fp32=(w16, a16), int8=(w8, a8), w8=(w8, a16), w4=(w4, a16), "
      "w4a8=(w4, a8)")),
    ({"target": ORT, "wbits": 8, "abits": 8, "head_bits": 4},
     "head_bits 4 (as (4, 4) for the patch_embed): target 'onnxruntime-cpu' cannot execute a patch_embed layer"),
    ({"target": ORT, "budgets": {"latency": 0.5}, "fixed_layers": {"head": (3, 4)}},
     "fixed layer 'head' (3, 4): no layer kind of target 'onnxruntime-cpu' executes it"),
    ({"target": ORT, "budgets": {"size": 1e6}}, None),
    ({"target": ORT, "wbits": 4, "abits": 8, "head_bits": None},
     "wbits/abits (4, 8) with head_bits None: target 'onnxruntime-cpu' cannot execute a patch_embed layer"),
], ids=lambda v: str(v)[:40])
def test_method_field_rules(kwargs, message):
    if message is None:
        MethodSpec(**kwargs)
        return
    with pytest.raises(ValidationError) as info:
        MethodSpec(**kwargs)
    assert message in str(info.value)


def test_valid_target_specs():
    uniform = MethodSpec(target=ORT, wbits=4, abits=8, head_bits=8, block_size=64)
    assert uniform.block_size == 64
    mixed = MethodSpec(target=ORT, budgets={"latency": 0.6, "wbits": 6}, forms=("w4", "int8", "w4"),
                       sweep=16, sweep_budget="latency", head_bits=16)
    assert mixed.forms == ("w4", "int8")  # duplicates dropped, order kept
    assert MethodSpec(target=ORT, budgets={"latency_ms": 2.5}, head_bits=None).budgets == {"latency_ms": 2.5}


def _config(**method) -> PipelineConfig:
    return PipelineConfig(model={"name": "builtin:vit-digits"}, method=method)


def test_validate_config_rejects_fixed_pair_the_kind_cannot_run():
    config = _config(target=ORT, budgets={"latency": 0.5}, fixed_layers={"patch_embed.proj": (4, 16)})
    with pytest.raises(PipelineInputError) as info:
        validate_config(config)
    assert info.value.code == "invalid_bits"
    assert info.value.message == ("fixed layer 'patch_embed.proj' is a patch_embed layer that onnxruntime-cpu "
                                  "cannot run at [4, 16]; give it one of [16, 16] (fp32), [8, 8] (int8)")
    assert info.value.details["allowed"] == [[16, 16], [8, 8]]
    linear = _config(target=ORT, budgets={"latency": 0.5}, fixed_layers={"blocks.0.mlp.fc1": (3, 8)})
    with pytest.raises(PipelineInputError, match=r"'blocks.0.mlp.fc1' is a fc1 layer that onnxruntime-cpu cannot "
                                                 r"run at \[3, 8\]; give it one of \[16, 16\] \(fp32\), "
                                                 r"\[8, 8\] \(int8\), \[8, 16\] \(w8\), \[4, 16\] \(w4\), "
                                                 r"\[4, 8\] \(w4a8\)"):
        validate_config(linear)


def test_validate_config_accepts_target_jobs():
    ok = _config(target=ORT, budgets={"latency": 0.5},
                 fixed_layers={"blocks.0.mlp.fc1": (4, 8), "blocks.0.attn.matmul_av": (16, 8)})
    assert validate_config(ok) == []
    assert validate_config(_config(target=ORT, wbits=4, abits=16)) == []


def test_a_runtime_target_without_bits_defaults_to_the_int8_form():
    method = MethodSpec(target=ORT)
    assert (method.wbits, method.abits) == (8, 8)
    assert (MethodSpec().wbits, MethodSpec().abits) == (4, 4)  # sim keeps its default
    assert MethodSpec(target=ORT, wbits=4, abits=16).abits == 16  # given bits are kept
