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

The server commands live in :mod:`service.commands.server`, the API-client ones in :mod:`service.commands.jobs`;
this module only assembles the parser.
"""

from __future__ import annotations

import argparse

from service.commands import jobs, server

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mpq`` parser with every sub-command (each sets ``func``, the function that runs it)."""
    parser = argparse.ArgumentParser(
        prog="mpq", description="Mixed-precision quantization of vision transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    server.add_commands(sub)
    jobs.add_commands(sub)
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
