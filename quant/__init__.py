"""mpq quantization library: fake-quantized timm ViT/DeiT/Swin, calibration, mixed precision, export.

Entry points: ``quant.ptq.quantize_ptq`` (one PTQ recipe), ``quant.pipeline.run_pipeline`` (a whole job) and
``quant.load_quantized`` (rebuild a saved bundle). Nothing here imports the service.
"""

__version__ = "0.1.0"


def load_quantized(path, device: str = "cpu"):
    """Rebuild a quantized model from a bundle folder (see ``quant.bundle.load_quantized``)."""
    from .bundle import load_quantized as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_quantized"]
