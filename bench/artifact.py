"""Artifact benchmark: bundle size vs the theoretical packed size, bit-exact reload, and the ONNX QDQ export.

Section ``bundle`` (per built-in model): uniform W8A8, W4A4, W3A3 (patch embedding and head at 8 bits) and a fixed
mixed assignment (2..8-bit weights, 4..8-bit activations, attention matmuls at 6/8 bits). For each: the average
weight bits, the float32 size of the weights, the packed integer weights alone, the theoretical bundle size (every
stored value at its exact width: ``numel * bits / 8`` for codes and zero points, the dtype's size for scales,
biases, norms, embeddings and activation parameters), the actual ``model.safetensors`` size and its overhead
over the theoretical one (safetensors header + the padding of each code stream to whole groups of 8 codes), the
``quant_config.json`` size, and whether ``load_quantized`` reproduces the in-memory model's test logits bit for bit.

Section ``onnx`` (vit-digits, uniform minmax quantizers): W8A8 and W4A4 exported with ``export_onnx``; file size,
QDQ node counts, how many weight initializers are uint4, top-1 on the 500-image test split from PyTorch and from
onnxruntime (CPU), the largest logit difference and how many images differ by more than 1e-4 (the rest agree to
float rounding; the few that differ hit a rounding tie where the two runtimes' last-bit float differences pick
neighbouring codes, one 4-bit step apart, which then propagates).

Usage: ``.venv/bin/python bench/artifact.py [--models vit-digits,swin-digits] [--section bundle|onnx]
[--method minmax|repq|dopq] [--markdown]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see quant/__init__.py)

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.bundle import bundle_sizes, load_quantized, save_bundle
from quant.data import load_dataset
from quant.evaluate import predict_logits
from quant.models import ModelLoadError, build_model, model_info
from quant.ptq import PTQ_METHODS, quantize_ptq
from quant.wrap import quant_layers, set_bits_, set_uniform_bits_

#: Mixed assignment by component: (wbits, abits); layers not named keep 8/8.
MIXED = {"qkv": (4, 6), "proj": (5, 6), "fc1": (2, 4), "fc2": (3, 5), "reduction": (4, 6), "matmul_qk": (16, 8),
         "matmul_av": (16, 6)}


def _print(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    print(f"\n### {title}\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def _assign(qmodel, label: str) -> None:
    if label == "mixed":
        set_uniform_bits_(qmodel, 8, 8)
        set_bits_(qmodel, {name: MIXED[layer.component] for name, layer in quant_layers(qmodel).items()
                           if layer.component in MIXED})
    else:
        bits = int(label[1])
        set_uniform_bits_(qmodel, bits, bits, head_bits=8)


def bench_bundle(model_name: str, method: str, markdown: bool) -> None:
    name = f"builtin:{model_name}"
    info = model_info(name)
    float_model = build_model(name)
    calib = load_dataset("builtin:digits", split="calib", model_name=name)
    test = load_dataset("builtin:digits", split="test", model_name=name)
    recipe = PTQ_METHODS[method]
    rows = []
    for label in ("W8A8", "W4A4", "W3A3", "mixed"):
        bits = 4 if label == "mixed" else int(label[1])  # calibrated like the pipeline: mixed from W4A4
        qmodel, _ = quantize_ptq(float_model, calib.images, method=method, wbits=bits, abits=bits, head_bits=8)
        _assign(qmodel, label)
        fp32 = sum(layer.weight.numel() * 4 for layer in quant_layers(qmodel).values() if layer.has_weight)
        layers = quant_layers(qmodel).values()
        params = sum(q.weight.numel() for q in layers if q.has_weight)
        wavg = sum(q.weight.numel() * q.wbits for q in layers if q.has_weight) / params
        expected = predict_logits(qmodel, test.images, 250)
        with tempfile.TemporaryDirectory() as tmp:
            save_bundle(qmodel, tmp, model_spec={"name": name, "arch_kwargs": info["arch_kwargs"]},
                        recipe={"softmax": recipe.softmax, "minmax": recipe.minmax})
            sizes = bundle_sizes(tmp)
            start = time.perf_counter()
            loaded = load_quantized(tmp)
            load_s = time.perf_counter() - start
            exact = torch.equal(predict_logits(loaded, test.images, 250), expected)
        rows.append([
            model_name, label, f"{wavg:.2f}", f"{fp32:,}", f"{sizes['packed_weight_bytes']:,.0f}",
            f"{sizes['theoretical_bytes']:,.0f}", f"{sizes['actual_bytes']:,}", f"{100 * sizes['overhead']:.2f} %",
            f"{sizes['header_bytes']:,}", f"{sizes['config_bytes']:,}", f"{_top1(expected, test.labels):.2f}",
            "yes" if exact else "NO", f"{load_s:.2f}",
        ])
    header = ["model", "bits", "avg wbits", "fp32 weights B", "packed weights B", "theoretical B",
              "model.safetensors B", "overhead", "header B", "quant_config.json B", "top-1 %", "reload bit-exact",
              "load s"]
    _print(f"Bundle size and reload ({model_name}, {method})", header, rows, markdown)


def bench_onnx(markdown: bool) -> None:
    import onnx
    import onnxruntime as ort

    from quant.export import export_onnx

    name = "builtin:vit-digits"
    float_model = build_model(name)
    calib = load_dataset("builtin:digits", split="calib", model_name=name)
    test = load_dataset("builtin:digits", split="test", model_name=name)
    rows = []
    for wbits, abits in ((8, 8), (4, 4)):
        qmodel, _ = quantize_ptq(float_model, calib.images, method="minmax", wbits=wbits, abits=abits)
        torch_logits = predict_logits(qmodel, test.images, 250)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = export_onnx(qmodel, Path(tmp) / "model.onnx", tuple(test.images.shape[1:]))
            export_s = time.perf_counter() - start
            proto = onnx.load(str(path))
            onnx.checker.check_model(proto, full_check=True)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            outs = [session.run(None, {"images": test.images[i:i + 250].numpy()})[0]
                    for i in range(0, len(test.images), 250)]
            size = path.stat().st_size
        ort_logits = torch.from_numpy(np.concatenate(outs))
        ops = Counter(node.op_type for node in proto.graph.node)
        meta = {p.key: p.value for p in proto.metadata_props}
        t1, o1 = _top1(torch_logits, test.labels), _top1(ort_logits, test.labels)
        differ = int(((ort_logits - torch_logits).abs().amax(1) > 1e-4).sum())
        rows.append([
            f"W{wbits}A{abits}", f"{size:,}", str(ops["QuantizeLinear"]), str(ops["DequantizeLinear"]),
            f"{meta['mpq.int4_weights']}/{meta['mpq.qdq_weights']}", meta["mpq.float_simulated_activations"],
            f"{t1:.2f}", f"{o1:.2f}", f"{o1 - t1:+.2f}", f"{(ort_logits - torch_logits).abs().max().item():.2e}",
            f"{differ}/{len(test.images)}",
            f"{export_s:.1f}",
        ])
    header = ["bits", "model.onnx B", "QuantizeLinear", "DequantizeLinear", "uint4 weights", "float-simulated acts",
              "torch top-1 %", "onnxruntime top-1 %", "diff", "max |logit diff|", "images > 1e-4 apart", "export s"]
    _print("ONNX QDQ export (vit-digits, minmax, opset 21)", header, rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-digits,swin-digits")
    parser.add_argument("--section", choices=("bundle", "onnx", "all"), default="all")
    parser.add_argument("--method", choices=tuple(PTQ_METHODS), default="minmax")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.section in ("bundle", "all"):
        for model_name in args.models.split(","):
            try:
                bench_bundle(model_name, args.method, args.markdown)
            except ModelLoadError as exc:
                print(f"\n(skipped {model_name}: {exc})")
    if args.section in ("onnx", "all"):
        bench_onnx(args.markdown)


if __name__ == "__main__":
    main()
