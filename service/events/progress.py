"""Monotone overall progress and an ETA from the measured rate of this run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["ProgressTracker"]

#: Seconds of a run before an ETA is given (earlier rates are noise).
MIN_ELAPSED_FOR_ETA = 2.0


@dataclass
class ProgressTracker:
    """Turns the pipeline's progress reports (0..1) into a never-decreasing value and an ETA.

    ``start`` is the progress the run resumed from; the rate is (progress gained) / (seconds since this run
    started), so the ETA ``(1 - progress) / rate`` reflects the speed measured on this machine.
    """

    start: float = 0.0
    clock: float = field(default_factory=time.monotonic)
    value: float = 0.0

    def __post_init__(self) -> None:
        self.value = max(self.value, self.start)

    def update(self, fraction: float, now: float | None = None) -> tuple[float, float | None]:
        """Record a report; returns ``(progress, eta_seconds or None)`` with progress >= every earlier value."""
        now = time.monotonic() if now is None else now
        self.value = max(self.value, min(max(float(fraction), 0.0), 1.0))
        return self.value, self.eta(now)

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate measured since the run started; None before it can be measured."""
        elapsed = now - self.clock
        gained = self.value - self.start
        if elapsed < MIN_ELAPSED_FOR_ETA or gained <= 0:
            return None
        if self.value >= 1.0:
            return 0.0
        return round((1.0 - self.value) * elapsed / gained, 1)
