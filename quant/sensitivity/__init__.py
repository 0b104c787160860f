"""LampQ sensitivity: Fisher Omegas of every parameter-table entry (``fisher``, ``compute``), the table they form
with the per-type factors (``table``) and the pipeline stage (``stage``)."""

from .compute import compute_sensitivity, measure_kl
from .stage import sensitivity_stage
from .table import SensitivityTable

__all__ = ["SensitivityTable", "compute_sensitivity", "measure_kl", "sensitivity_stage"]
