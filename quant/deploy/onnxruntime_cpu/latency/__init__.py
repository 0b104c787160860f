"""Measured per-layer latency on onnxruntime-cpu: the table the bit allocation uses to meet a latency budget.

``profile_latency(qmodel, (C, H, W))`` -> ``LatencyTable`` (``layers[name][form]`` ms, ``rest_ms``, ``fp32_ms``,
``predict(forms)``), cached on disk. Modules: ``layers`` (batch-1 shape capture), ``graphs`` (one ONNX graph per
layer and form, written by the form's emitter ``..emit``, the export's), ``measure`` (interleaved timing), ``fp32``
(the float32 whole model), ``profile`` (the profiler), ``table`` (the table and its cache), ``validate`` (predicted
against measured whole models), ``cli`` (``mpq profile-latency``).
"""

from .layers import LayerShape, capture_layers, unique_shapes
from .profile import profile_latency
from .table import LatencyTable

__all__ = ["LatencyTable", "LayerShape", "capture_layers", "profile_latency", "unique_shapes"]
