"""Measured per-layer latency on onnxruntime-cpu: the table the bit allocation uses to meet a latency budget.

``profile_latency(qmodel, (C, H, W))`` -> ``LatencyTable`` (``layers[name][form]`` ms, ``rest_ms``, ``fp32_ms``,
``predict(forms)``), cached on disk. Modules: ``layers`` (batch-1 shape capture), ``graphs`` (one ONNX graph per
layer and form), ``measure`` (interleaved timing), ``fp32`` (the float32 whole model), ``table`` (the table, the
cache and the profiler), ``cli`` (``mpq profile-latency``).
"""

from .layers import LayerShape, capture_layers, unique_shapes
from .profile import profile_latency
from .table import LatencyTable

__all__ = ["LatencyTable", "LayerShape", "capture_layers", "profile_latency", "unique_shapes"]
