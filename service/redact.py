"""Keep server internals out of what tenants see: file-system paths become neutral names, tracebacks never leave.

Tenants get an error code, a message and a correlation id (request id or job id); the traceback and the real
paths go to the server log. :class:`Redactor` replaces known paths (each artifact's blob by ``artifact <id>``,
the artifact and data roots by ``<artifacts>`` / ``<data>``) and, as a safety net, any remaining absolute path
under a usual system root by ``<path>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["TRACEBACK_MARKER", "Redactor"]

TRACEBACK_MARKER = "Traceback (most recent call last)"

#: Absolute paths under these roots are never shown to a tenant.
_ROOTS = ("tmp", "var", "work", "home", "root", "usr", "opt", "srv", "mnt", "data", "private", "Users", "etc")
#: The rest of a path after a known prefix (up to white space, quotes or closing punctuation).
_TAIL = r"(?:/[^\s'\"`,;:)\]}]*)?"
_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:" + "|".join(_ROOTS) + r")" + _TAIL)
_RELATIVE_VAR = re.compile(r"(?<![\w/])(?:\./)?var/artifacts" + _TAIL)


class Redactor:
    """Replace server paths in strings and JSON-like values.

    ``replacements`` maps a path (string) to what the tenant may see instead; both the path as given and its
    resolved absolute form are replaced, longest first. A path under one of ``roots`` is replaced whole by the
    root's label (``<artifacts>/blobs/ab/...`` would still show the store's layout).
    """

    def __init__(
        self,
        replacements: Mapping[str | Path, str] | None = None,
        roots: Iterable[tuple[Path | None, str]] = (),
    ) -> None:
        pairs: dict[str, str] = {}
        for path, label in (replacements or {}).items():
            for form in _forms(path):
                pairs.setdefault(form, label)
        self._pairs = sorted(pairs.items(), key=lambda item: -len(item[0]))
        forms = {form: label for path, label in roots if path is not None for form in _forms(path)}
        self._roots = [
            (re.compile(re.escape(form) + _TAIL), label)
            for form, label in sorted(forms.items(), key=lambda item: -len(item[0]))
        ]

    def text(self, value: str) -> str:
        """``value`` with every known path replaced and any traceback cut off."""
        for path, label in self._pairs:
            if path in value:
                value = value.replace(path, label)
        for pattern, label in self._roots:
            value = pattern.sub(label, value)
        value = _ABSOLUTE.sub("<path>", value)
        value = _RELATIVE_VAR.sub("<artifacts>", value)
        cut = value.find(TRACEBACK_MARKER)
        if cut >= 0:
            value = value[:cut].rstrip() or "internal error; see the server log"
        return value

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


def _forms(path: str | Path) -> list[str]:
    text = str(path)
    if not text or text in (".", "/"):
        return []
    forms = {text.rstrip("/")}
    try:
        forms.add(str(Path(text).resolve()))
        forms.add(str(Path(text).absolute()))
    except OSError:
        pass
    return [form for form in forms if len(form) > 1]
