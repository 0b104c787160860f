"""``wait_until``: the one way a test waits for something another thread or process does.

A test never sleeps a fixed time and never assumes how long something takes: it names the condition it waits for
and a generous bound. The suite runs on loaded two-core CI machines next to other CPU-heavy work, so the bound is
only there to turn a hang into a failure with a message; it is never what makes a test pass.

A state that must never be seen while waiting is an ``assert`` inside the predicate: it fails the test at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")

#: The most characters of the predicate's last value that a failure message repeats.
_LAST_VALUE_CHARS = 2000


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an ``AssertionError``, so pytest reports a plain test failure)."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "",
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value, and return that value.

    After ``timeout`` seconds (and one last call) raise :class:`WaitTimeout` naming what was awaited: ``message``,
    a string or a callable evaluated only on failure (e.g. a server's log tail), and the predicate's last value.
    Exceptions raised by the predicate propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            what = what or getattr(predicate, "__name__", "a condition")
            last = repr(value)[:_LAST_VALUE_CHARS]
            raise WaitTimeout(f"waited {timeout:g} s for: {what} (last value: {last})")
        time.sleep(interval)
