"""The stage mechanism of a run: stored outputs are reused, progress is reported per stage, cancellation is polled.

``StageRunner.stage(name, body)`` returns the stage's stored output when the store has one (a resumed run, or a
stage reused from a parent job), else runs ``body`` and stores what it returns with its duration. Stages whose
output names a blob use ``stage(name, body, restore)``: ``restore(output)`` turns a stored output back into the
stage's values, and returns None when it cannot (the blob is gone), in which case the stage runs again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..config import PipelineConfig
from ..errors import PipelineCancelled
from ..progress import progress_segments
from .store import StageStore

__all__ = ["ProgressCallback", "StageRunner"]

#: (stage, overall fraction 0..1, message)
ProgressCallback = Callable[[str, float, str], None]


class StageRunner:
    """Runs the stages of one job against its store (module doc)."""

    def __init__(self, config: PipelineConfig, progress: ProgressCallback | None, store: StageStore,
                 should_cancel: Callable[[], bool] | None) -> None:
        self.segments = progress_segments(config)  # the bar's share of each stage, from the config
        self.progress = progress
        self.store = store
        self.should_cancel = should_cancel
        self.timings: dict[str, float] = {}
        self.outputs: dict[str, dict] = {}

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        """Progress inside ``stage`` (0..1); raises ``PipelineCancelled`` when the job was cancelled."""
        if self.should_cancel is not None and self.should_cancel():
            raise PipelineCancelled(f"cancelled during {stage}")
        if self.progress is None:
            return
        start, span = self.segments[stage]
        self.progress(stage, min(start + span * max(min(fraction, 1.0), 0.0), 1.0), message)

    def stage(self, name: str, body: Callable[[], dict], restore: Callable[[dict], Any] | None = None) -> dict:
        """The output of stage ``name``: stored (and restorable) or computed now (module doc)."""
        stored = self.store.load(name)
        if stored is not None and (restore is None or restore(stored) is not None):
            self.outputs[name] = stored
            self.report(name, 1.0, "reused stored output")
            return stored
        self.report(name, 0.0, "started")
        start = time.perf_counter()
        output = body()
        self.timings[name] = time.perf_counter() - start
        output = {**output, "seconds": self.timings[name]}
        self.store.save(name, output)
        self.outputs[name] = output
        self.report(name, 1.0, "finished")
        return output
