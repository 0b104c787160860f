"""CPU-side guards for device bugs (tensors created on the CPU next to a CUDA model, host syncs in forward).

1. A static scan of every ``quant/**.py``: a call of a torch tensor factory (``torch.zeros``, ``ones``, ``empty``,
   ``full``, ``arange``, ``tensor``, ``randn``, ``rand``, ``randint``, ``randperm``, ``linspace``, ``eye``,
   ``as_tensor``) must pass ``device=`` (or derive from an existing tensor: ``*_like``, ``x.new_*`` are not
   factories here). Exempt: calls inside ``__init__`` (module state registered as parameters/buffers, which
   ``module.to(device)`` moves) and the reviewed places in ``_ALLOWED`` (CPU by design), each with its reason.
2. A runtime check: a calibrated quantized model of every recipe is moved to the ``meta`` device and run under a
   ``TorchFunctionMode`` that fails on any tensor op that sees a CPU tensor (a 0-dim CPU tensor mixes silently
   with CUDA tensors, so plain execution on CUDA would not catch it) — and ``float()``/``.item()`` on a meta
   tensor raises, so host syncs in forward fail too.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import timm
import torch
from torch.overrides import TorchFunctionMode

from quant.ptq import quantize_ptq

QUANT = Path(__file__).resolve().parents[2] / "quant"
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "randn", "rand", "randint", "randperm",
             "linspace", "eye", "as_tensor"}
#: (file relative to quant/, enclosing function) -> why a CPU tensor is right there
_ALLOWED = {
    ("bundle/save.py", "_contents"): "serialisation: tensors written to a safetensors file live on the CPU",
    ("packing.py", "pack_codes"): "bit packing for the bundle file runs on the CPU",
    ("packing.py", "unpack_codes"): "bit unpacking of a bundle file runs on the CPU",
    ("data.py", "*"): "datasets are loaded on the CPU and moved to the device in batches",
    ("imageset.py", "*"): "image sets are read from their file on the CPU",
    ("digits.py", "*"): "the built-in digits are loaded on the CPU",
    ("image_folder.py", "*"): "image folders are decoded on the CPU",
    ("reconstruct/qdrop.py", "MaskSource.__init__"): "the CPU mask pool's generator is used on the CPU only",
}


def _factory_calls(path: Path):
    tree = ast.parse(path.read_text())
    stack: list[str] = []

    def visit(node, scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = scope + [node.name]
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in FACTORIES and isinstance(func.value, ast.Name)
                    and func.value.id == "torch" and not any(k.arg == "device" for k in node.keywords)):
                yield node.lineno, func.attr, scope
        for child in ast.iter_child_nodes(node):
            yield from visit(child, scope)

    yield from visit(tree, stack)


def test_every_tensor_factory_in_quant_names_a_device():
    offenders = []
    for path in sorted(QUANT.rglob("*.py")):
        rel = path.relative_to(QUANT).as_posix()
        for line, name, scope in _factory_calls(path):
            if "__init__" in scope and not (rel, ".".join(scope[-2:])) in _ALLOWED:
                continue  # registered module state: follows module.to(device)
            func = scope[-1] if scope else "<module>"
            qualified = ".".join(scope[-2:]) if len(scope) >= 2 else func
            if (rel, "*") in _ALLOWED or (rel, func) in _ALLOWED or (rel, qualified) in _ALLOWED:
                continue
            offenders.append(f"quant/{rel}:{line} torch.{name}(...) in {func} has no device=")
    assert not offenders, "tensors created without a device (pass device=..., or use *_like / x.new_*):\n" + \
        "\n".join(offenders)


def test_the_scan_catches_the_reparam_bug_class(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef fold(weight):\n    return torch.zeros(weight.shape[0])\n"
                   "\n\ndef fine(weight):\n    return torch.zeros(3, device=weight.device) + weight.new_zeros(3)\n")
    found = list(_factory_calls(bad))
    assert [(line, name) for line, name, _ in found] == [(4, "zeros")]


class _NoCpuTensors(TorchFunctionMode):
    """Fails on any torch op whose tensor arguments include a CPU tensor while the model lives on ``meta``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in list(args) + list(kwargs.values()):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    raise AssertionError(f"{getattr(func, '__name__', func)} got a CPU tensor {tuple(t.shape)} "
                                         f"while the model is on another device")
        return func(*args, **kwargs)


def _tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "vit":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                                 embed_dim=32, num_heads=2, num_classes=5).eval()
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, patch_size=2,
                             window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2), num_classes=5).eval()


@pytest.mark.parametrize("arch", ["vit", "swin"])
@pytest.mark.parametrize("method", ["minmax", "repq", "dopq"])
def test_quantized_forward_creates_no_cpu_tensors_and_no_host_syncs(arch, method):
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    qmodel, _ = quantize_ptq(_tiny(arch), images, method=method, wbits=4, abits=4, batch_size=8)
    meta = copy.deepcopy(qmodel).to("meta")
    x = torch.empty(2, 3, 16, 16, device="meta")
    with torch.no_grad(), _NoCpuTensors():
        out = meta(x)
    assert out.device.type == "meta" and out.shape == (2, 5)
