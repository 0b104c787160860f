"""Generic ONNX export of wrapped models (``export_onnx``): torch.export writes the float parts, placeholders are
replaced by emitted nodes (``placeholder``); ``graph`` (the ``Sink`` emitters write to), ``qdq`` (the one place
``QuantizeLinear``/``DequantizeLinear`` are written), ``sim`` (the export modules of ``sim`` layers). Deployment
targets add their own layer emitters (``quant.deploy``)."""

from .graph import ONNX_OPSET, OnnxExportError, Sink
from .onnx import export_onnx

__all__ = ["ONNX_OPSET", "OnnxExportError", "Sink", "export_onnx"]
