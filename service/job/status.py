"""The status poll's read path: one job as JSON bytes, straight from column values.

``GET /v1/jobs/{id}`` is what every client polls, so it does the least it can: the route runs on the event loop
(the tenant comes from the key cache), and this function, run once in the thread pool, opens a short session on
an autocommit connection (no ``BEGIN``/``ROLLBACK`` round trips), reads the job row and its stage rows with two
Core queries (no ORM entities) and serializes them with :class:`~service.job.schemas.JobPublic`, whose field set
is the route's documented body.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.errors import NotFound
from service.job.repository import JobRepository
from service.job.schemas import JobPublic

__all__ = ["job_json"]


def job_json(session_factory: sessionmaker[Session], tenant_id: uuid.UUID, job_id: uuid.UUID) -> bytes:
    """The tenant's job as the JSON body of ``GET /v1/jobs/{id}``; 404 ``job_not_found`` for unknown ids and
    other tenants' jobs alike."""
    with session_scope(session_factory) as session:
        values = JobRepository(session).get_values(tenant_id, job_id)
    if values is None:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return JobPublic.model_validate(values).model_dump_json().encode()
