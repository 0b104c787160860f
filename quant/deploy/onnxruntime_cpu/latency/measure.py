"""Interleaved wall-clock timing of several onnxruntime sessions.

``time_interleaved(runs, rounds=30, warmup=5, primed=...)`` calls every ``run`` ``warmup`` times, then runs
``rounds`` rounds; a round calls each run once, in an order shuffled with a fixed seed, a primed run right after
one untimed call of itself (hot caches, as in back-to-back inference). The result is each run's median
milliseconds. Interleaving spreads slow phases (other processes, frequency changes) evenly over all sessions.

Sessions are created only through ``open_session`` so a test can count them (``SESSIONS.created``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..runtime import make_session

__all__ = ["MEASURE_CONFIG", "SESSIONS", "SessionCounter", "open_session", "time_interleaved"]


@dataclass
class SessionCounter:
    """How many onnxruntime sessions the latency profiler created in this process."""

    created: int = 0


#: Process-wide count of sessions opened by ``open_session``.
SESSIONS = SessionCounter()


#: Session config added to ``quant.deploy.onnxruntime_cpu.runtime.session_options()`` for measurement: the intra-op pool stops
#: spinning when a ``Run`` ends (inside a ``Run`` it spins as deployed). Without it, the idle workers of the
#: sessions run just before keep spinning and take the cores from the session being timed.
MEASURE_CONFIG = {"session.force_spinning_stop": "1"}


def open_session(model):
    """An onnxruntime CPU session with mpq's ``session_options()`` plus ``MEASURE_CONFIG``, counted in
    ``SESSIONS``; ``model`` is a ``ModelProto``, its bytes or a path."""
    SESSIONS.created += 1
    return make_session(model, config=MEASURE_CONFIG)


def time_interleaved(runs: Sequence[Callable[[], object]], *, rounds: int = 30, warmup: int = 5,
                     seed: int = 0, primed: Sequence[int] = (),
                     progress: Callable[[float], None] | None = None) -> list[float]:
    """Median wall milliseconds of each of ``runs`` over ``rounds`` shuffled interleaved rounds.

    primed: indices of runs that are called once untimed right before each timed call (a whole model timed as a
    deployment runs it, back to back with itself). ``progress(fraction)`` is called after each round. Raises
    ``ValueError`` when rounds < 1 or warmup < 0.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    for _ in range(warmup):
        for run in runs:
            run()
    order = list(range(len(runs)))
    primed_set = set(primed)
    rng = random.Random(seed)
    times: list[list[float]] = [[] for _ in runs]
    clock = time.perf_counter
    for done in range(rounds):
        rng.shuffle(order)
        for i in order:
            if i in primed_set:
                runs[i]()
            start = clock()
            runs[i]()
            times[i].append((clock() - start) * 1e3)
        if progress is not None:
            progress((done + 1) / rounds)
    return [statistics.median(t) for t in times]
