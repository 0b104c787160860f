"""Make pipeline outputs safe for JSON columns (PostgreSQL's JSONB rejects NaN and Infinity)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """A copy of ``value`` with tuples as lists, paths as strings, numpy/torch scalars as numbers and
    non-finite floats as ``None``; objects with ``to_dict`` or ``tolist`` are converted through them."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)
