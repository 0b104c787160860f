"""Idempotent POSTs following the IETF ``Idempotency-Key`` header draft (see :mod:`service.idempotency.guard`)."""

from service.idempotency.guard import IDEMPOTENCY_HEADER, IdempotencyKeyDep, fingerprint, run_idempotent

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyKeyDep", "fingerprint", "run_idempotent"]
