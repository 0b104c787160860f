"""The ``mpq`` command line.

- ``mpq serve``: the API plus the embedded worker (SQLite by default, loopback 127.0.0.1:8000). Migrates the
  database first. When the database has no API key at all, it creates one for tenant ``local`` and prints it
  once at start (keep it: it is stored hashed and cannot be shown again).
- ``mpq worker``: a Celery worker for the ``quantize`` queue (needs ``MPQ_BROKER_URL``).
- ``mpq submit``, ``mpq status``, ``mpq download``: a small client of the API (``MPQ_API_URL``, ``MPQ_API_KEY``).
- ``mpq keys create --tenant NAME``: make an API key (printed once).
- ``mpq db upgrade`` / ``mpq db downgrade`` / ``mpq db current``: Alembic migrations on ``MPQ_DATABASE_URL``.
- ``mpq quantize``: one job locally (registered by :mod:`quant.cli` when it is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _settings(**overrides: Any) -> Any:
    from service.settings import Settings

    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**values)


# ---- serve / worker / keys / db -------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service import migrations
    from service.app import create_app
    from service.auth.service import ensure_local_key
    from service.kit.db import make_engine, make_session_factory, session_scope

    settings = _settings(host=args.host, port=args.port, log_level=args.log_level)
    if args.no_worker:
        settings = settings.model_copy(update={"embedded_worker": False})
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
    )
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
    print(f"mpq: serving on http://{settings.host}:{settings.port} (docs at /docs)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if not settings.broker_url:
        print(
            "mpq worker: set MPQ_BROKER_URL (redis://... or amqp://...); without a broker, "
            "`mpq serve` runs jobs in its embedded worker",
            file=sys.stderr,
        )
        return 2
    from service.worker.celery_app import run_celery_worker

    return run_celery_worker(settings, concurrency=args.concurrency, loglevel=args.log_level)


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from service import migrations
    from service.auth.service import create_key
    from service.kit.db import make_engine, make_session_factory, session_scope
    from service.kit.errors import MPQError

    settings = _settings()
    if not migrations.is_up_to_date(settings.database_url):
        migrations.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            created = create_key(session, args.tenant, key_name=args.name)
    except MPQError as exc:
        print(f"mpq keys create: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(created.key)
    print(f"(tenant {created.tenant!r}; store this key now, it is kept only as a hash)", file=sys.stderr)
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from service import migrations
    from service.kit.db import make_engine

    url = args.url or _settings().database_url
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision)
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision)
    engine = make_engine(url)
    try:
        current = migrations.current_revision(engine)
    finally:
        engine.dispose()
    print(f"database at revision {current or 'base'} (head: {migrations.head_revision(url)})")
    return 0


# ---- client commands ------------------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from service.client import MPQClient

    settings = _settings()
    key = args.key or settings.api_key
    if not key:
        raise SystemExit("mpq: no API key; pass --key or set MPQ_API_KEY")
    return MPQClient(args.url or settings.api_url, key)


def _parse_budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be NAME=NUMBER (e.g. wbits=4), got {text!r}") from None


def _print_job(job: dict[str, Any]) -> None:
    stage = job.get("stage") or "-"
    print(
        f"{job['id']}  {job['status']:<9}  {100 * job.get('progress', 0):5.1f}%  stage={stage}  {job.get('message', '')}"
    )


def _cmd_submit(args: argparse.Namespace) -> int:
    from service.client import APIError

    spec: dict[str, Any] = {}
    if args.spec:
        text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
        spec = json.loads(text)
    if args.model:
        spec.setdefault("model", {})["name"] = args.model
    if args.budget:
        spec.setdefault("method", {}).setdefault("budgets", {}).update(dict(args.budget))
    if "model" not in spec:
        raise SystemExit("mpq submit: give a JSON spec file or --model")
    with _client(args) as client:
        try:
            if args.weights:
                spec["model"]["weights_artifact_id"] = client.upload(args.weights, "weights")["id"]
            if args.data:
                spec.setdefault("data", {})["artifact_id"] = client.upload(args.data, "images")["id"]
            if args.eval_data:
                spec.setdefault("data", {})["eval_artifact_id"] = client.upload(args.eval_data, "images")[
                    "id"
                ]
            job = client.create_job(spec)
            print(job["id"])
            if args.wait:
                job = client.wait(
                    job["id"], on_update=lambda j: _print_job(j) if sys.stderr.isatty() else None
                )
                _print_job(job)
                return 0 if job["status"] == "succeeded" else 1
        except APIError as exc:
            print(f"mpq submit: {exc}", file=sys.stderr)
            return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from service.client import APIError

    with _client(args) as client:
        try:
            job = (
                client.wait(args.job_id, on_update=_print_job) if args.watch else client.get_job(args.job_id)
            )
        except APIError as exc:
            print(f"mpq status: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(job, indent=2))
    elif not args.watch:
        _print_job(job)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from service.client import APIError

    with _client(args) as client:
        try:
            path = client.download(args.job_id, args.output or f"mpq-{args.job_id}", extract=not args.zip)
        except APIError as exc:
            print(f"mpq download: {exc}", file=sys.stderr)
            return 1
    print(path)
    return 0


# ---- parser ---------------------------------------------------------------------------------------------------
def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="API base URL (default MPQ_API_URL or http://127.0.0.1:8000)"
    )
    parser.add_argument("--key", default=None, help="API key (default MPQ_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpq", description="Mixed-precision quantization of vision transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and the embedded worker")
    serve.add_argument("--host", default=None, help="bind address (default MPQ_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default MPQ_PORT or 8000)")
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.add_argument("--log-level", default=None)
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker (needs MPQ_BROKER_URL)")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs at a time (one per GPU)")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=_cmd_worker)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(func=_cmd_keys_create)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, default, text in (
        ("upgrade", "head", "migrate up"),
        ("downgrade", "base", "migrate down"),
        ("current", None, "show the revision"),
    ):
        command = db_sub.add_parser(name, help=text)
        if default is not None:
            command.add_argument("--revision", default=default)
        command.add_argument("--url", default=None, help="database URL (default MPQ_DATABASE_URL)")
        command.set_defaults(func=_cmd_db)

    submit = sub.add_parser("submit", help="upload inputs and submit a job")
    submit.add_argument("spec", nargs="?", help="job JSON (POST /v1/jobs body) or - for stdin")
    submit.add_argument("--model", help="model name (overrides the spec)")
    submit.add_argument("--weights", help="safetensors weights to upload as model.weights_artifact_id")
    submit.add_argument("--data", help="safetensors images to upload as data.artifact_id")
    submit.add_argument("--eval-data", help="safetensors images+labels to upload as data.eval_artifact_id")
    submit.add_argument(
        "--budget", action="append", type=_parse_budget, default=[], help="NAME=VALUE; repeatable"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish")
    _add_client_options(submit)
    submit.set_defaults(func=_cmd_submit)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--watch", action="store_true", help="poll until it finishes")
    status.add_argument("--json", action="store_true", help="print the whole job as JSON")
    _add_client_options(status)
    status.set_defaults(func=_cmd_status)

    download = sub.add_parser("download", help="download a finished job's bundle")
    download.add_argument("job_id")
    download.add_argument("-o", "--output", help="folder to extract into (default ./mpq-<job id>)")
    download.add_argument("--zip", action="store_true", help="save the zip as --output instead of extracting")
    _add_client_options(download)
    download.set_defaults(func=_cmd_download)

    try:  # `mpq quantize` lives in quant/ (it needs torch); skip it if that part is not installed
        from quant.cli import add_quantize_parser
    except ImportError:
        pass
    else:
        add_quantize_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
