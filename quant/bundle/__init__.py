"""The quantized-model bundle (format version 3; see ``format``): ``save_bundle``, ``load_quantized`` and
``bundle_sizes``."""

from .format import BUNDLE_FORMAT_VERSION, CONFIG_FILE, MODEL_FILE, REPORT_FILE, BundleError
from .load import load_quantized
from .save import save_bundle
from .sizes import bundle_sizes

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "CONFIG_FILE",
    "MODEL_FILE",
    "REPORT_FILE",
    "BundleError",
    "bundle_sizes",
    "load_quantized",
    "save_bundle",
]
