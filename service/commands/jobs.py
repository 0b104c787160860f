"""``mpq submit``, ``mpq status``, ``mpq download`` and ``mpq pareto``: a client of a running API.

They talk to ``MPQ_API_URL`` with ``MPQ_API_KEY`` (or ``--url`` / ``--key``) through :class:`service.client.MPQClient`;
``--wait`` / ``--follow`` draw a live progress bar from the job's event stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.commands.server import settings_from

__all__ = ["JOB_MARKER", "add_commands", "download_conflict", "eta_text", "open_client"]


def add_commands(sub: Any) -> None:
    """Register ``submit``, ``status``, ``download`` and ``pareto`` on the ``mpq`` sub-parsers."""
    submit = sub.add_parser("submit", help="upload inputs and submit a job")
    submit.add_argument("spec", nargs="?", help="job JSON (POST /v1/jobs body) or - for stdin")
    submit.add_argument("--model", help="model name (overrides the spec)")
    submit.add_argument("--weights", help="safetensors weights to upload as model.weights_artifact_id")
    submit.add_argument("--data", help="safetensors images to upload as data.artifact_id")
    submit.add_argument("--eval-data", help="safetensors images+labels to upload as data.eval_artifact_id")
    submit.add_argument("--synthetic", type=int, metavar="N", help="data-free: generate N calibration images")
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


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="API base URL (default MPQ_API_URL or http://127.0.0.1:8000)"
    )
    parser.add_argument("--key", default=None, help="API key (default MPQ_API_KEY)")


def open_client(args: argparse.Namespace) -> Any:
    from service.client import MPQClient

    settings = settings_from()
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


def eta_text(seconds: float | None) -> str:
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
        line = f"[{bar}] {100 * job.progress:5.1f}%  {job.status:<9} stage={job.stage or '-':<11} {eta_text(state['eta'])}"
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
    if args.synthetic:  # data-free: the job generates its calibration images (docs/data-free.md)
        spec.setdefault("data", {})["synthetic"] = {"images": args.synthetic}
    if "model" not in spec:
        raise SystemExit("mpq submit: give a JSON spec file or --model")
    with open_client(args) as client:
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

    with open_client(args) as client:
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


def download_conflict(destination: Path, job_id: str, zip_file: bool) -> str | None:
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
    conflict = download_conflict(destination, args.job_id, args.zip)
    if conflict and not args.force:
        print(f"mpq download: {conflict}; choose another -o or pass --force to overwrite", file=sys.stderr)
        return 1
    with open_client(args) as client:
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

    with open_client(args) as client:
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
