"""Deployment targets, one package each (``onnxruntime_cpu``), plus the target-independent ``Form`` record
(``form``). Generic code looks targets up through the registry ``quant.target``; a target package holds everything
specific to its runtime: its forms, runtime settings, the emitters that write each form's nodes, the export of its
layers, its latency table and profiler, and the deploy check."""

__all__: list[str] = []
