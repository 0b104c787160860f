"""The ``mpq`` command line.

- ``mpq serve``: the API plus the embedded worker (SQLite by default, loopback 127.0.0.1:8000). Migrates the
  database first. ``--workers N`` runs the API in N processes (:mod:`service.serve`). When the database has no API key at all, it creates one for tenant ``local`` and prints it
  once at start (keep it: it is stored hashed and cannot be shown again).
- ``mpq worker``: a Celery worker for the ``quantize`` queue (needs ``MPQ_BROKER_URL``).
- ``mpq submit [--wait]``, ``mpq status [--follow]``, ``mpq download``, ``mpq pareto``: a client of the API
  (``MPQ_API_URL``, ``MPQ_API_KEY``); ``--wait``/``--follow`` show a live progress bar from the job's event stream;
  ``mpq pareto JOB --budget wbits --points 16`` prints a finished job's Pareto curve (``--json`` for the raw body).
- ``mpq keys create --tenant NAME [--expires-in 30d]``: make an API key (printed once); ``mpq keys list``,
  ``mpq keys revoke PREFIX`` (takes effect within 10 s on every API process: their key cache time).
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
    from service.serve import serve

    settings = _settings(host=args.host, port=args.port, log_level=args.log_level)
    if args.no_worker:
        settings = settings.model_copy(update={"embedded_worker": False})
    serve(settings, workers=args.workers)
    return 0


def _data_location(settings: Any) -> str:
    from service.serve import data_location

    return data_location(settings)


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

    print(f"mpq worker: {_data_location(settings)}; device MPQ_DEVICE={settings.device}", flush=True)
    return run_celery_worker(settings, concurrency=args.concurrency, loglevel=args.log_level)


def _cmd_keys(args: argparse.Namespace) -> int:
    from service import migrations
    from service.auth.service import create_key, list_keys, parse_duration, revoke_key
    from service.kit.db import make_engine, make_session_factory, session_scope
    from service.kit.errors import MPQError

    settings = _settings()
    if not migrations.is_up_to_date(settings.database_url):
        migrations.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            if args.keys_command == "create":
                expires_in = parse_duration(args.expires_in) if args.expires_in else None
                created = create_key(session, args.tenant, key_name=args.name, expires_in=expires_in)
                print(created.key)
                until = f", expires {created.expires_at:%Y-%m-%d %H:%M} UTC" if created.expires_at else ""
                print(
                    f"(tenant {created.tenant!r}{until}; store this key now, it is kept only as a hash)",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                keys = list_keys(session, args.tenant)
                if args.json:
                    rows = [{**vars(key), "state": key.state} for key in keys]
                    print(json.dumps(rows, indent=2, default=str))
                for key in [] if args.json else keys:
                    expires = f"{key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "never"
                    print(
                        f"{key.prefix}  {key.state:<7}  tenant={key.tenant}  created={key.created_at:%Y-%m-%d}"
                        f"  expires={expires}  id={key.id}  {key.name}"
                    )
            else:
                key = revoke_key(session, args.key_id)
                print(f"revoked {key.prefix} (id {key.id}); API processes stop accepting it within 10 s")
    except MPQError as exc:
        print(f"mpq keys {args.keys_command}: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
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


def _print_job(job: Any) -> None:
    stage = job.get("stage") or "-"
    print(
        f"{job['id']}  {job['status']:<9}  {100 * job.get('progress', 0):5.1f}%  stage={stage}  {job.get('message', '')}"
    )


def _eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --"
    seconds = round(seconds)
    return (
        f"ETA {seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"ETA {seconds // 60}m{seconds % 60:02d}s"
    )


def _follow(client: Any, job_id: str) -> Any:
    """Follow a job's event stream with a live progress bar on stderr; returns the final job.

    On a terminal the bar is redrawn in place; otherwise one line is printed per stage or status change.
    """
    live = sys.stderr.isatty()
    state: dict[str, Any] = {"eta": None, "line": None}

    def on_event(event: Any) -> None:
        if event.event == "progress":
            state["eta"] = event.data.get("eta_seconds")
        elif event.event == "status":  # the end, or a run starting over: the last run's ETA no longer holds
            state["eta"] = None

    def on_update(job: Any) -> None:
        filled = round(30 * job.progress)
        bar = "#" * filled + "." * (30 - filled)
        line = f"[{bar}] {100 * job.progress:5.1f}%  {job.status:<9} stage={job.stage or '-':<11} {_eta_text(state['eta'])}"
        if live:
            print(f"\r{line}  {job.message[:40]:<40}", end="", file=sys.stderr, flush=True)
        elif (job.status, job.stage) != state["line"]:
            print(line, file=sys.stderr, flush=True)
        state["line"] = (job.status, job.stage)

    job = client.wait(job_id, on_update=on_update, on_event=on_event)
    if live:
        print(file=sys.stderr)
    return job


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
            job = client.submit(spec, idempotency_key=args.idempotency_key)
            print(job.id, flush=True)
            if args.wait:
                job = _follow(client, job.id)
                _print_job(job)
                return 0 if job.status == "succeeded" else 1
        except APIError as exc:
            print(f"mpq submit: {exc}", file=sys.stderr)
            return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from service.client import APIError

    with _client(args) as client:
        try:
            if args.follow:
                job = _follow(client, args.job_id)
            elif args.watch:
                job = client.wait(args.job_id, on_update=_print_job)
            else:
                job = client.get_job(args.job_id)
        except APIError as exc:
            print(f"mpq status: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(job.model_dump_json(indent=2))
    elif not args.watch:
        _print_job(job)
    return 0 if not args.follow or job.status == "succeeded" else 1


#: File an extracted bundle folder records its job id in, so that another job's download does not overwrite it.
JOB_MARKER = ".mpq-job"


def _download_conflict(destination: Path, job_id: str, zip_file: bool) -> str | None:
    """Why downloading ``job_id`` into ``destination`` would overwrite something else; None when it would not."""
    if zip_file:
        return f"{destination} exists" if destination.exists() else None
    if destination.exists() and not destination.is_dir():
        return f"{destination} exists and is not a folder"
    if not destination.is_dir() or not any(destination.iterdir()):
        return None
    marker = destination / JOB_MARKER
    owner = marker.read_text().strip() if marker.is_file() else None
    if owner == job_id:
        return None  # the same job's bundle again
    what = f"the bundle of job {owner}" if owner else "files that are not this job's bundle"
    return f"{destination} already holds {what}"


def _cmd_download(args: argparse.Namespace) -> int:
    from service.client import APIError

    destination = Path(args.output or f"mpq-{args.job_id}")
    conflict = _download_conflict(destination, args.job_id, args.zip)
    if conflict and not args.force:
        print(f"mpq download: {conflict}; choose another -o or pass --force to overwrite", file=sys.stderr)
        return 1
    with _client(args) as client:
        try:
            path = client.download(args.job_id, destination, extract=not args.zip)
        except APIError as exc:
            print(f"mpq download: {exc}", file=sys.stderr)
            return 1
    if not args.zip:
        (Path(path) / JOB_MARKER).write_text(args.job_id + "\n")
    print(path)
    return 0


def _parse_values(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"values must be numbers separated by commas, got {text!r}"
        ) from None


def _pareto_table(curve: Any) -> list[str]:
    """One line per point: value, objective, status, average weight bits, predicted latency, forms; * = chosen."""
    lines = [
        f"budget {curve.budget} ({curve.unit})",
        "   value      objective  status         wbits   ms      forms",
    ]
    for point in curve.points:
        objective = f"{point.objective:.6g}" if point.objective is not None else "-"
        wbits = f"{point.wbits_avg:.3f}" if point.wbits_avg is not None else "-"
        latency = f"{point.predicted_latency_ms:.3f}" if point.predicted_latency_ms is not None else "-"
        forms = " ".join(f"{name}:{count}" for name, count in sorted((point.forms or {}).items())) or "-"
        mark = "*" if point.chosen else " "
        lines.append(
            f"{mark} {point.value:<10.6g} {objective:<10} {point.status:<14} {wbits:<7} {latency:<7} {forms}"
        )
    return lines


def _cmd_pareto(args: argparse.Namespace) -> int:
    from service.client import APIError

    with _client(args) as client:
        try:
            curve = client.pareto(
                args.job_id, args.budget, args.points, args.values, time_limit=args.time_limit
            )
        except APIError as exc:
            print(f"mpq pareto: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(curve.model_dump_json(indent=2))
    else:
        print("\n".join(_pareto_table(curve)))
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
    serve.add_argument(
        "--workers", type=int, default=1, help="API processes (default 1; see docs/mlops.md for when more help)"
    )
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker (needs MPQ_BROKER_URL)")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="jobs at a time on a CPU worker; a GPU worker runs one (one worker per GPU, CUDA_VISIBLE_DEVICES)",
    )
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=_cmd_worker)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--expires-in", default=None, help="lifetime, e.g. 30d, 12h, 2w (default: never)")
    create.set_defaults(func=_cmd_keys)
    listing = keys_sub.add_parser("list", help="list keys (prefix, state, expiry; never the key)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its prefix (e.g. mpq_AbC12345) or id")
    revoke.add_argument("key_id", help="the key's prefix as shown by mpq keys list, or its id")
    revoke.set_defaults(func=_cmd_keys)

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
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a live progress bar until it ends"
    )
    submit.add_argument(
        "--idempotency-key", default=None, help="reuse a key to make a retried submit return the first job"
    )
    _add_client_options(submit)
    submit.set_defaults(func=_cmd_submit)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--watch", action="store_true", help="print each update until it finishes")
    status.add_argument(
        "--follow", action="store_true", help="live progress bar (status, stage, ETA) until the job ends"
    )
    status.add_argument("--json", action="store_true", help="print the whole job as JSON")
    _add_client_options(status)
    status.set_defaults(func=_cmd_status)

    download = sub.add_parser("download", help="download a finished job's bundle")
    download.add_argument("job_id")
    download.add_argument("-o", "--output", help="folder to extract into (default ./mpq-<job id>)")
    download.add_argument("--zip", action="store_true", help="save the zip as --output instead of extracting")
    download.add_argument(
        "--force", action="store_true", help="overwrite --output even when it holds another job's bundle"
    )
    _add_client_options(download)
    download.set_defaults(func=_cmd_download)

    pareto = sub.add_parser("pareto", help="sweep a budget over a finished job's stored tables")
    pareto.add_argument("job_id")
    pareto.add_argument(
        "--budget", required=True, help="budget to sweep: wbits, abits, size, bops, latency, ..."
    )
    pareto.add_argument("--points", type=int, default=32, help="number of budget values, 2..256 (default 32)")
    pareto.add_argument(
        "--values",
        type=_parse_values,
        default=None,
        help="explicit budget values, comma-separated (e.g. 3,4,5)",
    )
    pareto.add_argument("--time-limit", type=float, default=None, help="solver seconds per point")
    pareto.add_argument("--json", action="store_true", help="print the response body as JSON")
    _add_client_options(pareto)
    pareto.set_defaults(func=_cmd_pareto)

    try:  # `mpq quantize` / `mpq profile-latency` live in quant/ (they need torch); skip if not installed
        from quant.cli import add_quantize_parser
        from quant.deploy.onnxruntime_cpu.latency.cli import add_profile_latency_command
    except ImportError:
        pass
    else:
        add_quantize_parser(sub)
        add_profile_latency_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
