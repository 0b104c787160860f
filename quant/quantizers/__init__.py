"""Quantization as values: params records, their pure fits and their fake-quantizing forward.

- ``params``: frozen records (``AffineParams``, ``DynamicParams``, ``TanQParams``, ``Log2Params``,
  ``WeightParams``; ``LayerParams`` for one layer);
- ``uniform``, ``weight``, ``tanq``, ``log2``: the fast fits (pure functions returning params) and the arithmetic;
- ``apply``: ``fake_quant(x, params)`` and ``quantize_weight(w, params)``;
- ``training``: AdaRound and QDrop params used while reconstruction trains a block;
- ``holder``: ``ParamsHolder``, the base of quantization layers and the only code that sets a layer's params;
- ``serialize``: params <-> named tensors plus a JSON description (bundles, stage blobs, checkpoints).
"""

from .apply import fake_quant, quantize_weight
from .holder import ParamsHolder
from .log2 import fit_log2, log2_fake_quant
from .params import (
    FLOAT_BITS,
    GRANULARITIES,
    ActParams,
    AffineParams,
    DynamicParams,
    LayerParams,
    Log2Params,
    TanQParams,
    WeightParams,
    map_tensors,
    params_equal,
)
from .ste import round_ste
from .tanq import fit_tanq, tanq_fake_quant
from .uniform import affine_from_range, fake_quant_uniform, fit_uniform, scale_zero, search_uniform_range
from .weight import block_view, fake_quant_weight, fit_weight, n_blocks, weight_codes

__all__ = [
    "FLOAT_BITS",
    "GRANULARITIES",
    "ActParams",
    "AffineParams",
    "DynamicParams",
    "LayerParams",
    "Log2Params",
    "ParamsHolder",
    "TanQParams",
    "WeightParams",
    "affine_from_range",
    "block_view",
    "fake_quant",
    "fake_quant_uniform",
    "fake_quant_weight",
    "fit_log2",
    "fit_tanq",
    "fit_uniform",
    "fit_weight",
    "log2_fake_quant",
    "map_tensors",
    "n_blocks",
    "params_equal",
    "quantize_weight",
    "round_ste",
    "scale_zero",
    "search_uniform_range",
    "tanq_fake_quant",
    "weight_codes",
]
