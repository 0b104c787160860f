"""Retry schedule of webhook deliveries: exponential backoff with jitter."""

from __future__ import annotations

import random

__all__ = ["retry_delay"]


def retry_delay(attempts: int, *, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based).

    ``min(base * 2**(attempts-1), maximum)`` times a uniform factor in [0.5, 1.0]: the delay doubles per attempt
    and concurrent failures spread out instead of retrying in lockstep.
    """
    ceiling = min(base * 2.0 ** max(attempts - 1, 0), maximum)
    return ceiling * (0.5 + 0.5 * (rng or random).random())
