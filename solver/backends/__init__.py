"""MIP/LP backends: HiGHS via ``highspy`` when importable (with CBC taking over a call HiGHS fails), CBC via PuLP
otherwise."""

from __future__ import annotations

from ..errors import SolverInputError
from .base import Backend, LPOutcome, MIPOutcome

__all__ = ["BACKENDS", "Backend", "LPOutcome", "MIPOutcome", "get_backend", "highs_available"]

BACKENDS = ("auto", "highs", "cbc")


def highs_available() -> bool:
    """Whether ``highspy`` can be imported."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def get_backend(name: str) -> Backend:
    """The backend for ``name`` in :data:`BACKENDS` (``auto``: HiGHS when installed, else CBC). HiGHS comes
    wrapped in :class:`~solver.backends.fallback.FallbackBackend`: a call it fails is repeated on CBC."""
    if name not in BACKENDS:
        raise SolverInputError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    if name == "highs" or (name == "auto" and highs_available()):
        if not highs_available():
            raise SolverInputError("backend 'highs' requested but highspy is not installed")
        from .cbc import CbcBackend
        from .fallback import FallbackBackend
        from .highs import HighsBackend

        return FallbackBackend(HighsBackend(), CbcBackend)
    from .cbc import CbcBackend

    return CbcBackend()
