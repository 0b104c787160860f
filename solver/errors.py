"""Errors raised by the solver package."""

from __future__ import annotations

__all__ = ["SolverInputError"]


class SolverInputError(ValueError):
    """A problem (or a solve option) breaks one of the input rules.

    The message states the rule that was broken and the offending value, e.g.
    ``layer 'blocks.0.attn.qkv' candidate (4, 4): sensitivity must be finite, got nan``.
    """
