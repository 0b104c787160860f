"""A minimal Server-Sent Events parser over lines (the ``text/event-stream`` format)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

from service.client.models import JobEvent

__all__ = ["SSEParser", "parse_async", "parse_lines"]


class SSEParser:
    """Feed lines; ``feed`` returns a :class:`JobEvent` when a blank line ends an event with data."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.event, self.id, self.data = "message", None, []

    def feed(self, line: str) -> JobEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data:
                self._reset()
                return None
            event = JobEvent(id=int(self.id or 0), event=self.event, data=json.loads("\n".join(self.data)))
            self._reset()
            return event
        if line.startswith(":"):
            return None  # comment (keep-alive ping)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.event = value
        elif field == "data":
            self.data.append(value)
        elif field == "id":
            self.id = value
        return None


def parse_lines(lines: Iterator[str]) -> Iterator[JobEvent]:
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def parse_async(lines: AsyncIterator[str]) -> AsyncIterator[JobEvent]:
    parser = SSEParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
