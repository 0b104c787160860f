"""A backend that hands a call over to a second backend when the first one fails.

HiGHS can fail for reasons outside this package (e.g. its process-global thread scheduler was started by another
library with another thread count). A failed call (status ``"error"``) is repeated on the fallback backend
(CBC) with the time that is left, so a failure never turns into a silently worse answer. ``notes`` records each
hand-over for the result's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..compile import Group
from .base import Backend, LPOutcome, MIPOutcome

__all__ = ["FallbackBackend"]


def _left(time_limit: float | None, started: float) -> float | None:
    return None if time_limit is None else max(time_limit - (time.perf_counter() - started), 0.01)


class FallbackBackend:
    """``primary``; on an ``"error"`` outcome, the same call on ``make_fallback()`` (created once, lazily)."""

    def __init__(self, primary: Backend, make_fallback: Callable[[], Backend]):
        self.primary = primary
        self._make_fallback = make_fallback
        self._fallback: Backend | None = None
        self.notes: list[str] = []

    @property
    def name(self) -> str:
        """The backend whose answers were used: the primary's name until a call fell back."""
        return self.primary.name if self._fallback is None else self._fallback.name

    def _other(self, what: str, message: str) -> Backend:
        if self._fallback is None:
            self._fallback = self._make_fallback()
        self.notes.append(
            f"{self.primary.name} {what} failed ({message}); {self._fallback.name} used instead"
        )
        return self._fallback

    def solve_lp(
        self, groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], time_limit: float | None
    ) -> LPOutcome:
        started = time.perf_counter()
        out = self.primary.solve_lp(groups, rhs, scale, time_limit)
        if out.status != "error":
            return out
        return self._other("LP", out.message).solve_lp(groups, rhs, scale, _left(time_limit, started))

    def solve_mip(
        self, groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], **kwargs: Any
    ) -> MIPOutcome:
        started = time.perf_counter()
        out = self.primary.solve_mip(groups, rhs, scale, **kwargs)
        if out.status != "error":
            return out
        kwargs["time_limit"] = _left(kwargs.get("time_limit"), started)
        return self._other("MIP", out.message).solve_mip(groups, rhs, scale, **kwargs)
