"""Capture a job's log lines (``mpq``, ``quant`` and ``solver`` loggers, on the thread running the job) into its
event log, bounded to ``max_lines`` per run, for ``GET /v1/jobs/{id}/logs``."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.events.recorder import record_log_lines

__all__ = ["JobLogCapture"]

#: Loggers whose records belong in a job's log.
CAPTURED_LOGGERS = ("mpq", "quant", "solver")
#: Lines buffered before they are written.
FLUSH_EVERY = 25


class JobLogCapture(logging.Handler):
    """A logging handler active for one run of one job (``start()`` ... ``stop()``)."""

    def __init__(
        self,
        job_id: uuid.UUID,
        session_factory: sessionmaker[Session],
        max_lines: int,
        *,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(level=logging.INFO)
        self.job_id = job_id
        self.session_factory = session_factory
        self.max_lines = max_lines
        self.redact = redact or (lambda text: text)
        self.thread_id = threading.get_ident()
        self.buffer: list[dict[str, Any]] = []
        self.kept = 0
        self.truncated = False
        self._levels: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Attach to the captured loggers (lowering them to INFO when they are quieter)."""
        for name in CAPTURED_LOGGERS:
            target = logging.getLogger(name)
            target.addHandler(self)
            if target.getEffectiveLevel() > logging.INFO:
                self._levels[name] = target.level
                target.setLevel(logging.INFO)

    def stop(self) -> None:
        """Write what is buffered and detach."""
        for name in CAPTURED_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id or self.max_lines <= 0:
            return
        try:
            message = self.redact(record.getMessage())[:2000]
        except Exception:  # noqa: BLE001 - a bad log call must not break the job
            return
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        with self._lock:
            if self.kept >= self.max_lines:
                if not self.truncated:
                    self.truncated = True
                    self.buffer.append({**line, "level": "WARNING", "message": "(log truncated)"})
                return
            self.kept += 1
            self.buffer.append(line)
            full = len(self.buffer) >= FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self.buffer = self.buffer, []
        if not lines:
            return
        try:
            with session_scope(self.session_factory) as session:
                record_log_lines(session, self.job_id, lines)
                session.commit()
        except Exception:
            logging.getLogger("mpq.events").debug("could not store log lines", exc_info=True)
