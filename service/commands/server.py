"""``mpq serve``, ``mpq worker``, ``mpq keys`` and ``mpq db``: run and administer a server on this machine.

These commands read :class:`service.settings.Settings` (``MPQ_*`` variables) and touch the database directly;
the job commands that talk to a running API are in :mod:`service.commands.jobs`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_commands", "settings_from"]


def settings_from(**overrides: Any) -> Any:
    """The service settings with the given command-line values (None = not given) over ``MPQ_*``."""
    from service.settings import Settings

    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**values)


def add_commands(sub: Any) -> None:
    """Register ``serve``, ``worker``, ``keys`` and ``db`` on the ``mpq`` sub-parsers."""
    serve = sub.add_parser("serve", help="run the API and the embedded worker")
    serve.add_argument("--host", default=None, help="bind address (default MPQ_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default MPQ_PORT or 8000)")
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.add_argument("--log-level", default=None)
    serve.add_argument(
        "--workers", type=int, default=1, help="API processes (default 1; see docs/operations.md for when more help)"
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.serve import serve

    settings = settings_from(host=args.host, port=args.port, log_level=args.log_level)
    if args.no_worker:
        settings = settings.model_copy(update={"embedded_worker": False})
    serve(settings, workers=args.workers)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from()
    if not settings.broker_url:
        print(
            "mpq worker: set MPQ_BROKER_URL (redis://... or amqp://...); without a broker, "
            "`mpq serve` runs jobs in its embedded worker",
            file=sys.stderr,
        )
        return 2
    from service.serve import data_location
    from service.worker.celery_app import run_celery_worker

    print(f"mpq worker: {data_location(settings)}; device MPQ_DEVICE={settings.device}", flush=True)
    return run_celery_worker(settings, concurrency=args.concurrency, loglevel=args.log_level)


def _cmd_keys(args: argparse.Namespace) -> int:
    from service import migrations
    from service.auth.service import create_key, list_keys, parse_duration, revoke_key
    from service.db import make_engine, make_session_factory, session_scope
    from service.errors import MPQError

    settings = settings_from()
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
    from service.db import make_engine

    url = args.url or settings_from().database_url
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
