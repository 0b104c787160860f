"""mpq quantization library: fake-quantized timm ViT/DeiT/Swin, calibration, mixed precision, export.

Entry points: ``quant.ptq.quantize_ptq`` (one PTQ recipe), ``quant.pipeline.run_pipeline`` (a whole job) and
``quant.load_quantized`` (rebuild a saved bundle). Nothing here imports the service.
"""

import os as _os

# GNU OpenMP threads spin while they wait; on a shared or oversubscribed CPU that turns small element-wise ops
# (round, tan, atan in the fake quantizers) into millisecond stalls (measured: 1000x slower with 2 threads at
# load 4). Passive waiting must be chosen before torch loads libgomp, so it is set here, on first import.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .version import __version__


def load_quantized(path, device: str = "cpu"):
    """Rebuild a quantized model from a bundle folder (see ``quant.bundle.load_quantized``)."""
    from .bundle import load_quantized as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_quantized"]
