"""Real components the suite needs (PostgreSQL, brokers, Chromium, MLflow, ...): fail in CI, skip locally.

CI (``CI=true``, as ``.ci/run`` is run) must prove every real component works, so a missing one fails the run.
A plain local run on a machine without, say, RabbitMQ skips those tests and says why.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["in_ci", "missing_component"]


def in_ci() -> bool:
    """True when the suite runs under CI (``CI`` set to a true value)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_component(reason: str) -> None:
    """Stop the current test because a real component is missing: ``pytest.fail`` in CI, ``pytest.skip`` locally.

    ``reason`` says which component, where it was looked for and how to provide it.
    """
    if in_ci():
        pytest.fail(f"required component missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)
