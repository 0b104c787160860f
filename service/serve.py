"""``mpq serve``: migrate, make the first key, and serve the API (and the embedded worker).

``mpq serve --workers N``: the API in N processes on one port, one embedded worker, one set of metrics.

uvicorn's process supervisor starts N API processes (``service.app:create_app`` as a factory, so each builds
its app from the environment) that share the listening socket; the kernel spreads connections over them. This
parent process has already migrated the database and made the first key, so the API processes skip migrating
(``MPQ_AUTO_MIGRATE=false``); it runs the one embedded worker itself (``MPQ_EMBEDDED_WORKER=false`` for the API
processes: jobs must not be claimed by N pollers that each think they are alone on the machine). Every API
process runs the webhook delivery loop; its compare-and-set claims keep each attempt to one sender. Request
counters and latency histograms are aggregated over the processes (prometheus_client's multiprocess mode, in a
fresh ``PROMETHEUS_MULTIPROC_DIR``); the job and webhook series come from the database as always.

When to use it: the API is CPU-bound Python, so one process uses one core. More processes help when the API
has cores of its own to spare (a PostgreSQL deployment with Celery workers elsewhere, or a large machine);
next to an embedded worker on a small machine they compete with the job for the same cores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

__all__ = ["MULTIPROC_ENV", "data_location", "serve", "serve_processes"]

#: prometheus_client's multiprocess directory variable.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def data_location(settings: Any) -> str:
    """Where the data lives (database URL without password, artifact folder), printed when a process starts."""
    from sqlalchemy.engine import make_url

    database = make_url(settings.database_url).render_as_string(hide_password=True)
    return (
        f"database {database}, artifacts in {settings.artifact_dir} (data directory MPQ_HOME={settings.home})"
    )


def _prepare(settings: Any) -> None:
    """Migrate (``MPQ_AUTO_MIGRATE``) and, when the database has no key at all, make one and print it once."""
    from service import migrations
    from service.auth.service import ensure_local_key
    from service.db import make_engine, make_session_factory, session_scope

    if settings.auto_migrate:
        migrations.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            created = ensure_local_key(session)
    finally:
        engine.dispose()
    if created is not None:
        print(
            f"mpq: no API keys existed; created one for tenant '{created.tenant}' (shown only now):\n"
            f"  MPQ_API_KEY={created.key}",
            flush=True,
        )


def serve(settings: Any, *, workers: int = 1) -> None:
    """Run ``mpq serve`` with ``settings`` until stopped: one API process, or ``workers`` of them."""
    import logging

    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
    )
    _prepare(settings)
    print(f"mpq: {data_location(settings)}", flush=True)
    print(f"mpq: serving on http://{settings.host}:{settings.port} (docs at /docs)", flush=True)
    if workers > 1:
        serve_processes(settings, workers)
        return
    from service.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
    )


def _child_environment(settings: Any, metrics_dir: str) -> dict[str, str]:
    """What the API processes must see besides the parent's environment (settings as resolved here)."""
    return {
        "MPQ_AUTO_MIGRATE": "false",
        "MPQ_EMBEDDED_WORKER": "false",
        "MPQ_DATABASE_URL": settings.database_url,
        "MPQ_ARTIFACT_DIR": str(settings.artifact_dir),
        "MPQ_HOST": settings.host,
        "MPQ_PORT": str(settings.port),
        "MPQ_LOG_LEVEL": settings.log_level,
        MULTIPROC_ENV: metrics_dir,
    }


def serve_processes(settings: Any, workers: int) -> None:
    """Serve the API in ``workers`` processes until stopped (SIGINT/SIGTERM); see the module doc."""
    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="mpq-metrics-")
    os.environ.update(_child_environment(settings, metrics_dir))
    worker = None
    if settings.embedded and settings.embedded_worker:
        from service.worker.embedded import EmbeddedWorker

        worker = EmbeddedWorker(settings)
        worker.start()
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
        )
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
