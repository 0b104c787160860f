"""Column helpers shared by the models."""

from __future__ import annotations

import enum

from sqlalchemy import Enum

__all__ = ["str_enum"]


def str_enum(enum_cls: type[enum.StrEnum], length: int = 16) -> Enum:
    """A portable (VARCHAR, non-native) column for a ``StrEnum`` storing the member values."""
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )
