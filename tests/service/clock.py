"""A settable clock for code that takes ``clock=`` (the webhook sender): tests play hours in milliseconds."""

from __future__ import annotations

import datetime as dt

from service.db import utcnow

__all__ = ["FakeClock"]


class FakeClock:
    """Starts at the real current time; only :meth:`advance` moves it."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def reset(self) -> dt.datetime:
        """Set the clock to the real current time (what was written until now is due) and return it."""
        self.now = utcnow()
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        """Move the clock forward and return the new time."""
        self.now += dt.timedelta(seconds=seconds)
        return self.now
