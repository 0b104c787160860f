"""Only ``quant/quantizers/`` writes quantization parameters: everywhere else they are values that are built, passed
and loaded (``ParamsHolder.load_params``), never edited. Checked on the source (AST) of quant/, service/ and solver/:
no assignment to a params field or to a layer's params slot, no ``setattr``/``object.__setattr__`` of one, no write
through ``__dict__``, and none of the old mutable quantizer attributes."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import quant
from quant.quantizers import params as params_module
from quant.quantizers import training

ROOT = Path(quant.__file__).resolve().parents[1]
OWNER = ROOT / "quant" / "quantizers"
#: Every field of a params record, the holder's slot, and the attributes of the mutable quantizers that are gone.
FIELDS = {
    field.name
    for cls in (params_module.AffineParams, params_module.DynamicParams, params_module.TanQParams,
                params_module.Log2Params, params_module.WeightParams, training.SoftRoundedWeight, training.QDropInput)
    for field in dataclasses.fields(cls)
} - {"block_size"} | {"_params", "weight_quantizer", "input_quantizer", "quantizer_a", "quantizer_b", "_fitted",
                      "observing", "calibrated", "dynamic_block", "include_zero", "symmetric"}


def _sources() -> list[Path]:
    files = []
    for package in ("quant", "service", "solver"):
        files += [p for p in sorted((ROOT / package).rglob("*.py")) if OWNER not in p.parents]
    return files


def _writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and part.attr in FIELDS and isinstance(part.ctx, ast.Store):
                    found.append((node.lineno, f"assignment to .{part.attr}"))
                if isinstance(part, ast.Subscript) and isinstance(part.value, ast.Attribute) \
                        and part.value.attr == "__dict__":
                    found.append((node.lineno, "write through __dict__"))
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("setattr", "__setattr__") and len(node.args) >= 2:
                key = node.args[1]
                if isinstance(key, ast.Constant) and key.value in FIELDS:
                    found.append((node.lineno, f"{name}(..., {key.value!r})"))
    return found


def test_the_checked_names_cover_the_params_records():
    assert {"scale", "zero_point", "bits", "granularity", "codes", "a", "c", "layout", "_params"} <= FIELDS


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_outside_quantizers_writes_quantizer_fields(path):
    assert _writes(ast.parse(path.read_text())) == []


def test_the_check_finds_writes():
    """The checker itself: each kind of write it must catch."""
    source = ("layer._params = p\nq.scale = s\nq.scale += 1\nsetattr(q, 'zero_point', z)\n"
              "object.__setattr__(p, 'bits', 3)\nlayer.__dict__['_params'] = p\nlayer.weight_quantizer = w\n")
    assert len(_writes(ast.parse(source))) == 7
    assert _writes(ast.parse("x = layer.params.scale\nlayer.load_params(p)\nmodel.block_size = 32\n")) == []
