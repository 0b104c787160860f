"""The ``onnxruntime-cpu`` deployment target: every quantization layer runs in one of the forms onnxruntime's CPU
execution provider executes.

Modules (only ``forms`` is imported with the package, so the registry ``quant.target`` loads no runtime):

- ``forms``: the form table (``FORMS``, ``FORM_NAMES``) and the weight bytes a form stores;
- ``emit``: one emitter per form, the only code that writes a form's ONNX nodes (``emit_layer``); 4-bit packing of
  ``MatMulNBits`` weights (``pack_matmul_nbits``);
- ``export``: a layer's arrays from its params (``layer_arrays``, which refuses params its form cannot run) and its
  placeholder in the exported graph (``export_layer``, used by ``quant.export.export_onnx``);
- ``runtime``: onnxruntime sessions, threads and the latency cache folder;
- ``latency``: the per-layer latency table, its profiler and ``mpq profile-latency``; its layer graphs call the same
  emitters with random codes of the layer's shapes, so the graph measured is the graph exported;
- ``check``: the deploy check of an exported graph (``onnx.checker``, onnxruntime vs torch, whole-model latency).

See ``docs/deploy-onnxruntime.md``.
"""

from .forms import FORM_NAMES, FORMS, TARGET

__all__ = ["FORMS", "FORM_NAMES", "TARGET"]
