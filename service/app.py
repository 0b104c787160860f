"""The FastAPI application: routers, error handlers, metrics, and start-up (migrations, embedded worker).

``create_app(settings)`` is the factory used by ``mpq serve``, tests and ``uvicorn --factory
service.app:create_app``. On start the database is migrated to head (``MPQ_AUTO_MIGRATE=true``, the default) or
checked to be at head; with no broker configured the embedded worker process is started next to the API.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service import migrations
from service.allocate.endpoints import router as allocate_router
from service.artifact.endpoints import router as artifact_router
from service.body_limits import BodyLimit, BodySizeLimitMiddleware
from service.db import make_engine, make_read_session_factory, make_session_factory
from service.errors_http import install_error_handlers
from service.events.endpoints import router as events_router
from service.health.endpoints import router as health_router
from service.job.endpoints import router as job_router
from service.job.service import NullDispatcher
from service.metrics import Metrics, PrometheusMiddleware
from service.metrics import router as metrics_router
from service.settings import Settings, get_settings
from service.storable_input import reject_unstorable_input
from service.webhooks.endpoints import router as webhooks_router

__all__ = ["create_app"]

logger = logging.getLogger("mpq.service")

#: Multipart framing allowed on top of MPQ_MAX_UPLOAD_BYTES before the body-size middleware answers 413.
_MULTIPART_OVERHEAD = 64 * 1024


def _prepare_database(settings: Settings) -> None:
    if settings.auto_migrate:
        migrations.upgrade(settings.database_url)
    elif not migrations.is_up_to_date(settings.database_url):
        raise RuntimeError("the database schema is not at the latest revision; run `mpq db upgrade` first")


def _make_dispatcher(settings: Settings) -> object:
    if settings.embedded:
        return NullDispatcher()
    from service.worker.celery_app import CeleryDispatcher

    return CeleryDispatcher(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _prepare_database(settings)
        from service.job.config import warm_up

        warm_up()  # torch, timm and the solver load now, not in the first POST /v1/jobs
        # Half a million objects live from here on (torch, timm, the solver): move them out of the collector's
        # reach, so that a full collection scans what requests allocate only (it took 150-400 ms, a status poll's
        # whole p99 budget several times over).
        gc.collect()
        gc.freeze()
        engine = make_engine(settings.database_url)
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        app.state.read_session_factory = make_read_session_factory(engine)
        app.state.dispatcher = _make_dispatcher(settings)
        worker = None
        if settings.embedded and settings.embedded_worker:
            from service.worker.embedded import EmbeddedWorker

            worker = EmbeddedWorker(settings)
            worker.start()
        app.state.worker = worker
        deliveries = None
        if settings.webhook_worker:
            from service.webhooks.delivery import DeliveryWorker

            deliveries = DeliveryWorker(app.state.session_factory, settings, on_outcome=metrics.webhook_outcome)
            deliveries.start()
        try:
            yield
        finally:
            if deliveries is not None:
                deliveries.stop()
            if worker is not None:
                worker.stop()
            engine.dispose()

    app = FastAPI(
        title="mpq",
        version="0.1.0",
        summary="Mixed-precision post-training quantization of vision transformers",
        lifespan=lifespan,
        dependencies=[Depends(reject_unstorable_input)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    metrics.add_jobs_collector(lambda: app.state.session_factory)
    install_error_handlers(app)
    for router in (
        health_router,
        metrics_router,
        artifact_router,
        job_router,
        events_router,
        webhooks_router,
        allocate_router,
    ):
        app.include_router(router)
    app.add_middleware(
        BodySizeLimitMiddleware,
        upload=BodyLimit(
            settings.max_upload_bytes + _MULTIPART_OVERHEAD,
            "MPQ_MAX_UPLOAD_BYTES",
            settings.max_upload_bytes,
            "upload_too_large",
        ),
        default=BodyLimit(
            settings.max_json_body_bytes,
            "MPQ_MAX_JSON_BODY_BYTES",
            settings.max_json_body_bytes,
            "body_too_large",
            "; send large data as an artifact (POST /v1/artifacts, MPQ_MAX_UPLOAD_BYTES) and refer to its id",
        ),
        upload_paths=("/v1/artifacts",),
    )
    app.add_middleware(PrometheusMiddleware, metrics=metrics)
    return app
