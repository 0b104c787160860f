"""The forms of the ``onnxruntime-cpu`` target: each layer takes one of the forms onnxruntime's CPU execution
provider runs, keyed by its ``(wbits, abits)`` pair (``quant.target`` is the registry over targets):

====================  ========  ==========================================  ======================  =================================================
form                  (w, a)    weights                                     input activations        ONNX (what onnxruntime runs)
====================  ========  ==========================================  ======================  =================================================
``fp32``              (16, 16)  float32                                     float32                 ``MatMul`` / ``Conv``
``int8``              (8, 8)    int8 symmetric per output channel (zp 0)    uint8 static per tensor  ``QuantizeLinear/DequantizeLinear`` around the
                                                                                                    input, ``DequantizeLinear(int8 W, axis)``;
                                                                                                    fused to ``MatMulIntegerToFloat`` for
                                                                                                    [B, T, K] linears; the patch-embedding Conv
                                                                                                    and a 2-D head keep ``DequantizeLinear`` and
                                                                                                    run in float (onnxruntime 1.32)
``w8``                (8, 16)   uint8 asymmetric, blocks of ``block_size``  float32                 ``com.microsoft.MatMulNBits`` bits=8,
                                along K (scale + zero point per block)                              accuracy_level=0
``w4``                (4, 16)   uint4 asymmetric, blocks along K            float32                 ``MatMulNBits`` bits=4, accuracy_level=0
``w4a8``              (4, 8)    uint4 asymmetric, blocks along K            int8 dynamic, symmetric  ``MatMulNBits`` bits=4, accuracy_level=4
                                                                            per row and K-block
``int8`` (matmul)     (16, 8)   -                                           both operands uint8      QDQ on both inputs of ``MatMul``
                                                                            static per tensor
====================  ========  ==========================================  ======================  =================================================

Linear layers (qkv, proj, fc1, fc2, reduction, head) take every linear form; the patch-embedding convolution
takes ``fp32`` and ``int8``; the attention matmuls ``q @ k^T`` and ``attn @ v`` take ``fp32`` and ``int8``
(the post-softmax map is quantized with a plain uniform uint8 quantizer, not TanQ/log2, because onnxruntime has no
such kernel). Softmax, LayerNorm, GELU and the residual adds stay float32 in every form.

The ``(wbits, abits)`` key of a form is what the solver, the sensitivity table and ``ParamTable`` see,
so one layer never has two forms with the same key. Measured on onnxruntime 1.32 (AVX-512 VNNI CPU, deit_small
fc1 shape [197, 384] x [384, 1536]): fp32 2.3 ms, int8 QDQ with int8 weights 0.71 ms (uint8 weights: 1.6 ms, hence
symmetric int8 weights), w4 1.2 ms, w4a8 2.0 ms, w8 2.6 ms: fewer bits is not automatically faster, which is why the
allocation uses a measured latency table (``quant.deploy.onnxruntime_cpu.latency``). The node pattern of every
form is written by one emitter (``emit.py``), for the export and the latency graphs alike.
"""

from __future__ import annotations

from ..form import Form

__all__ = ["FORMS", "FORM_NAMES", "TARGET", "form_weight_bytes"]

#: The target's name (``MethodSpec.target``, ``wrap_model_(target=...)``).
TARGET = "onnxruntime-cpu"

#: Every form of the target, in the order reports and the latency table list them.
FORMS: tuple[Form, ...] = (
    Form("fp32", 16, 16, "float", "float", ("linear", "conv", "matmul"), "MatMul/Conv (float32)"),
    Form("int8", 8, 8, "channel", "static", ("linear", "conv"),
         "QDQ: uint8 activations, int8 per-channel weights (MatMulIntegerToFloat for token linears)"),
    Form("int8", 16, 8, "float", "static", ("matmul",), "QDQ: uint8 on both MatMul inputs"),
    Form("w8", 8, 16, "block", "float", ("linear",), "MatMulNBits bits=8 accuracy_level=0", 0),
    Form("w4", 4, 16, "block", "float", ("linear",), "MatMulNBits bits=4 accuracy_level=0", 0),
    Form("w4a8", 4, 8, "block", "dynamic_block", ("linear",), "MatMulNBits bits=4 accuracy_level=4", 4),
)

#: Form names a job may list in ``MethodSpec.forms``.
FORM_NAMES = tuple(dict.fromkeys(f.name for f in FORMS))


def form_weight_bytes(form: Form, params: int, out_channels: int, block_size: int) -> float:
    """Bytes the deployed graph stores for a layer's weight in ``form`` (the ONNX initializers; biases excluded).

    ``fp32``: 4 bytes per parameter. ``int8``: 1 byte per parameter plus, per output channel, a float32 scale and an
    int8 zero point. Block forms (``MatMulNBits``): ``bits / 8`` bytes per parameter of the zero-padded blocks plus,
    per block, a float32 scale and a ``bits``-wide zero point (each row's zero points padded to whole bytes).
    Weightless layers (``params == 0``): 0.
    """
    if params == 0:
        return 0.0
    if form.weights == "float":
        return 4.0 * params
    if form.weights == "channel":
        return params + out_channels * 5.0
    k = params // max(out_channels, 1)
    blocks = -(-k // block_size)
    zero_points = -(-blocks * form.wbits // 8)  # bytes per row: 4-bit zero points pack two per byte, rows padded
    return out_channels * (blocks * (block_size * form.wbits / 8 + 4.0) + zero_points)
