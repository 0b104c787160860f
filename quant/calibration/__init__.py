"""A job's parameter table: what to calibrate (``plan``), one capture pass (``capture``), fast fits and the
output-aware search at every width (``calibrate``, ``search``, ``candidates``), and the table value (``table``)."""

from .calibrate import calibrate_table
from .plan import ActKey, CalibrationPlan, LayerPlan, WeightKey, layer_plan
from .search import SearchSettings
from .table import Pair, ParamTable, TableError, pair_key, parse_pair

__all__ = [
    "ActKey",
    "CalibrationPlan",
    "LayerPlan",
    "Pair",
    "ParamTable",
    "SearchSettings",
    "TableError",
    "WeightKey",
    "calibrate_table",
    "layer_plan",
    "pair_key",
    "parse_pair",
]
