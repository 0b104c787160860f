"""Cursor pagination and filters of GET /v1/jobs and GET /v1/artifacts (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from service.db import utcnow
from service.models import Artifact, ArtifactKind, Job, JobStatus, Tenant

from .conftest import error_of


def _tenant_id(client, name: str) -> uuid.UUID:
    with client.app.state.session_factory() as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == name))


def _insert_jobs(client, tenant_id: uuid.UUID, n: int, *, created_at: dt.datetime | None = None, **values):
    """``n`` job rows; rows given one ``created_at`` share it (ties are ordered by id)."""
    with client.app.state.session_factory() as session:
        jobs = [
            Job(
                tenant_id=tenant_id,
                spec={"model": {"name": "builtin:vit-digits"}},
                **{"status": JobStatus.QUEUED, **values},
                **({"created_at": created_at} if created_at else {}),
            )
            for _ in range(n)
        ]
        session.add_all(jobs)
        session.commit()
        return [job.id for job in jobs]


def test_cursor_paging_over_250_jobs_while_50_are_inserted(client, tenant) -> None:
    tenant_id = _tenant_id(client, tenant.name)
    base = utcnow() - dt.timedelta(hours=1)
    original: list[uuid.UUID] = []
    for i in range(25):  # 10 jobs per timestamp: ties are broken by id
        original += _insert_jobs(client, tenant_id, 10, created_at=base + dt.timedelta(seconds=i))
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 20, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", headers=tenant.headers, params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [job["id"] for job in body["data"]]
        pages += 1
        if pages <= 5:  # 50 new jobs arrive while the client pages
            _insert_jobs(client, tenant_id, 10)
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        after = body["next_cursor"]
    assert len(seen) == len(set(seen)), "a job was seen twice"
    assert set(seen) == {str(job_id) for job_id in original}, "a job was skipped"
    assert pages == 13  # ceil(250 / 20)
    # newest first, ties by id descending
    rows = client.get("/v1/jobs", headers=tenant.headers, params={"limit": 100}).json()["data"]
    keys = [(row["created_at"], row["id"]) for row in rows]
    assert keys == sorted(keys, reverse=True)
    assert len(rows) == 100


def test_job_filters(client, make_tenant) -> None:
    owner = make_tenant("filters")
    tenant_id = _tenant_id(client, owner.name)
    t0 = utcnow() - dt.timedelta(days=3)
    old = _insert_jobs(client, tenant_id, 2, created_at=t0, name="nightly")
    (parent,) = _insert_jobs(client, tenant_id, 1, created_at=t0 + dt.timedelta(days=1), name="base")
    children = _insert_jobs(client, tenant_id, 3, created_at=t0 + dt.timedelta(days=2), parent_id=parent)
    (failed,) = _insert_jobs(client, tenant_id, 1, status=JobStatus.FAILED, name="nightly")

    def ids(**params) -> set[str]:
        response = client.get("/v1/jobs", headers=owner.headers, params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["data"]}

    assert ids(parent_id=str(parent)) == {str(i) for i in children}
    assert ids(name="nightly") == {str(i) for i in [*old, failed]}
    assert ids(name="nightly", status="failed") == {str(failed)}
    after_day1 = (t0 + dt.timedelta(hours=12)).isoformat()
    before_day2 = (t0 + dt.timedelta(days=1, hours=12)).isoformat()
    assert ids(created_after=after_day1, created_before=before_day2) == {str(parent)}
    assert ids(created_before=(t0 + dt.timedelta(hours=1)).isoformat()) == {str(i) for i in old}
    response = client.get("/v1/jobs", headers=owner.headers, params={"after": "bm90LWEtY3Vyc29y"})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_cursor"


def test_artifact_paging_and_filters(client, tenant) -> None:
    tenant_id = _tenant_id(client, tenant.name)
    t0 = utcnow() - dt.timedelta(days=2)
    with client.app.state.session_factory() as session:
        rows = [
            Artifact(
                tenant_id=tenant_id,
                kind=ArtifactKind.IMAGES if i % 3 == 0 else ArtifactKind.WEIGHTS,
                sha256=f"{i:064x}",
                size=1,
                filename=f"{i}.safetensors",
                tensors={},
                created_at=t0 + dt.timedelta(minutes=i),
            )
            for i in range(45)
        ]
        session.add_all(rows)
        session.commit()
        all_ids = [str(row.id) for row in rows]
    seen, after = [], None
    while True:
        params = {"limit": 7, **({"after": after} if after else {})}
        body = client.get("/v1/artifacts", headers=tenant.headers, params=params).json()
        seen += [row["id"] for row in body["data"]]
        if not body["has_more"]:
            break
        after = body["next_cursor"]
    assert seen == list(reversed(all_ids))  # newest first, every row once
    images = client.get("/v1/artifacts", headers=tenant.headers, params={"kind": "images", "limit": 100})
    assert [row["id"] for row in images.json()["data"]] == list(reversed(all_ids[::3]))
    window = client.get(
        "/v1/artifacts",
        headers=tenant.headers,
        params={
            "created_after": (t0 + dt.timedelta(minutes=9, seconds=30)).isoformat(),
            "created_before": (t0 + dt.timedelta(minutes=12, seconds=30)).isoformat(),
        },
    )
    assert [row["id"] for row in window.json()["data"]] == list(reversed(all_ids[10:13]))
