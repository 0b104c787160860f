"""API latency under load: job creation and status polling with N concurrent clients while a job runs.

Starts ``mpq serve`` (API + embedded worker) on a fresh SQLite database (or a fresh schema of the
``--postgres`` server, or ``--database-url``), submits long mixed-precision jobs that keep the embedded worker busy
(one runs, the others wait behind it), then measures:

- ``POST /v1/jobs`` (``--creates N`` > 0): every client submits N jobs back to back (cancelled afterwards);
- ``GET /v1/jobs/{id}``: for each count of ``--clients`` (default 1,20,50), every client polls one job's status
  back to back for ``--duration`` seconds (``--think`` adds a pause). The polled job is the last queued one
  (``--poll queued``, the default: its body does not change, so runs compare) or the running one, whose body grows
  with every finished stage.

Prints p50/p95/p99 per row, the API processes' CPU time per request (Linux ``/proc``; the embedded worker's is
left out) and the 1-minute load average at the row's end. Target: p99 < 100 ms for status polls at
20 clients.

First-submit phase (``--phase first-submit``, also part of ``all``): a fresh ``mpq serve --no-worker`` (nothing
computes next to the API), then for each model ``--first-repeats`` submissions of configurations the server has
never seen (a new seed each time, so the validation cache never answers; the first one of each model also finds
the per-architecture profile cold). Models: the built-in ViT and Swin, and ``deit_small_patch16_224`` with
uploaded random weights (88 MB safetensors). Target: p95 < 1 s for every model. Usage::

    python bench/api.py --phase load --clients 1,20,50 --duration 20
    python bench/api.py --phase load --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/api.py --phase first-submit --first-repeats 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

#: A mixed-precision job on the built-in ViT that keeps the embedded worker busy during the measurement.
BACKGROUND_JOB = {
    "name": "bench-background",
    "model": {"name": "builtin:vit-digits"},
    "data": {"builtin": "builtin:digits", "num_calibration": 256, "batch_size": 32},
    "method": {"budgets": {"wbits": 4.5}, "iterative_rounds": 2},
    "device": "cpu",
}
#: What the clients submit: the same configuration, so creation measures the API path (auth, artifact checks,
#: remembered validation, insert of the job and its stages), not the first validate_config, which is timed once.
CREATED_JOB = {**BACKGROUND_JOB, "name": "bench-create"}


#: Models of the first-submit phase: (label, model block without weights, timm architecture to upload weights of).
FIRST_SUBMIT_MODELS = (
    ("builtin:vit-digits", {"name": "builtin:vit-digits"}, None),
    ("builtin:swin-digits", {"name": "builtin:swin-digits"}, None),
    ("deit_small_patch16_224", {"name": "deit_small_patch16_224"}, "deit_small_patch16_224"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api_cpu_seconds(server_pid: int) -> float:
    """CPU seconds (user + system) of the API process(es): the server and its children except the embedded worker
    (it runs the background job). Linux /proc; NaN elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        total = cpu(server_pid)
        for child in map(int, children):
            if b"service.worker.embedded" not in Path(f"/proc/{child}/cmdline").read_bytes():
                total += cpu(child)
        return total
    except (OSError, ValueError, IndexError):
        return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class _Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load generator shares the CPU with the
    server on small machines, so it must cost far less per request than the server does."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {key}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        reader = self.reader
        status = int((await reader.readline()).split()[1])
        length, chunked = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if not chunked:
            return status, await reader.readexactly(length)
        data = b""
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            data += await reader.readexactly(size + 2)
        await reader.readline()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _create_phase(
    url: str, key: str, clients: int, per_client: int
) -> tuple[list[float], list[str], int]:
    latencies: list[float] = []
    created: list[str] = []
    errors = 0
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(CREATED_JOB).encode()

    async def one_client() -> None:
        nonlocal errors
        connection = _Connection(host, int(port), key)
        for _ in range(per_client):
            start = time.perf_counter()
            status, data = await connection.request("POST", "/v1/jobs", body)
            latencies.append(time.perf_counter() - start)
            if status == 202:
                created.append(json.loads(data)["id"])
            else:
                errors += 1
        await connection.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    connection = _Connection(host, int(port), key)
    for job_id in created:  # keep the worker on the background job
        await connection.request("POST", f"/v1/jobs/{job_id}/cancel")
    await connection.close()
    return latencies, created, errors


async def _poll_phase(
    url: str, key: str, job_id: str, clients: int, duration: float, think: float
) -> tuple[list[float], int, set[str]]:
    latencies: list[float] = []
    errors = 0
    statuses: set[str] = set()
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + duration

    async def one_client(index: int) -> None:
        nonlocal errors
        connection = _Connection(host, int(port), key)
        if think:  # spread the clients over one poll interval
            await asyncio.sleep(think * index / clients)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            status, data = await connection.request("GET", f"/v1/jobs/{job_id}")
            latencies.append(time.perf_counter() - start)
            if status == 200:
                statuses.add(json.loads(data)["status"])
            else:
                errors += 1
            if think:
                await asyncio.sleep(think)
        await connection.close()

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, errors, statuses


def _row(
    name: str, clients: int, latencies: list[float], errors: int, seconds: float, size: int, cpu: float
) -> str:
    ms = [value * 1000 for value in latencies]
    return (
        f"| {name:<22} | {clients:>7} | {len(ms):>8} | {errors:>6} | {statistics.median(ms):>8.1f} "
        f"| {_percentile(ms, 95):>8.1f} | {_percentile(ms, 99):>8.1f} | {max(ms):>8.1f} "
        f"| {len(ms) / seconds:>7.0f} | {1000 * cpu / max(len(ms), 1):>10.2f} | {size:>8} "
        f"| {os.getloadavg()[0]:>11.1f} |"
    )


def _start_server(root: Path, database_url: str | None, *extra: str) -> tuple[subprocess.Popen, str, str]:
    """``mpq serve`` on a free port with a fresh artifact folder; returns (process, url, generated key)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MPQ_DATABASE_URL": database_url or f"sqlite:///{root / 'mpq.db'}",
        "MPQ_ARTIFACT_DIR": str(root / "artifacts"),
        "MPQ_LOG_LEVEL": "warning",
    }
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        _stop(server)
        raise SystemExit(f"server did not start; log in {root / 'server.log'}")
    match = re.search(r"MPQ_API_KEY=(\S+)", (root / "server.log").read_text())
    if match is None:
        _stop(server)
        raise SystemExit("no generated key printed (database already had keys?)")
    return server, url, match.group(1)


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def _random_weights(arch: str, path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))


def first_submit_phase(repeats: int, database_url: str | None) -> list[str]:
    """Submit never-seen configurations of each model to an idle server; returns the table's lines."""
    root = Path(tempfile.mkdtemp(prefix="mpq-bench-first-"))
    server, url, key = _start_server(root, database_url, "--no-worker")
    headers = {"Authorization": f"Bearer {key}"}
    lines = [
        (
            f"\nfirst POST /v1/jobs of never-seen configurations ({repeats} per model, new seed each), idle "
            f"server without worker, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start\n"
        ),
        "| model                  | upload (s) | first (ms) | p50 (ms) | p95 (ms) | max (ms) | target p95 < 1 s |",
        "|------------------------|-----------:|-----------:|---------:|---------:|---------:|:----------------:|",
    ]
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            for label, model, arch in FIRST_SUBMIT_MODELS:
                model = dict(model)
                upload_seconds = float("nan")
                if arch is not None:
                    path = root / f"{arch}.safetensors"
                    _random_weights(arch, path)
                    start = time.perf_counter()
                    with path.open("rb") as handle:
                        response = client.post("/v1/artifacts", files={"file": (path.name, handle)})
                    upload_seconds = time.perf_counter() - start
                    response.raise_for_status()
                    model["weights_artifact_id"] = response.json()["id"]
                latencies = []
                for seed in range(repeats):
                    spec = {
                        "model": model,
                        "data": {"builtin": "builtin:digits", "num_calibration": 64},
                        "method": {"budgets": {"wbits": 4.5}},
                        "seed": 1000 + seed,
                        "device": "cpu",
                    }
                    start = time.perf_counter()
                    response = client.post("/v1/jobs", json=spec)
                    latencies.append(time.perf_counter() - start)
                    if response.status_code != 202:
                        raise SystemExit(f"{label}: {response.status_code} {response.text}")
                ms = [value * 1000 for value in latencies]
                p95 = _percentile(ms, 95)
                lines.append(
                    f"| {label:<22} | {upload_seconds:>10.2f} | {ms[0]:>10.0f} | {statistics.median(ms):>8.0f} "
                    f"| {p95:>8.0f} | {max(ms):>8.0f} | {'meets' if p95 < 1000 else 'misses':^16} |"
                )
    finally:
        _stop(server)
    lines.append(f"load average at end {os.getloadavg()[0]:.1f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase", choices=("all", "first-submit", "load"), default="all")
    parser.add_argument("--first-repeats", type=int, default=10, help="never-seen submissions per model")
    parser.add_argument("--clients", default="1,20,50", help="comma-separated client counts of the poll rows")
    parser.add_argument("--workers", type=int, default=1, help="API processes (mpq serve --workers N)")
    parser.add_argument("--background", type=int, default=3, help="background jobs submitted (one runs)")
    parser.add_argument(
        "--poll",
        choices=("queued", "running"),
        default="queued",
        help="poll the last queued job (its body stays the same, so runs compare) or the running one",
    )
    parser.add_argument("--label", default="", help="printed in the table's title (e.g. before/after)")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL: runs in a fresh schema")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of status polling")
    parser.add_argument("--creates", type=int, default=0, help="job creations per client (0: no create row)")
    parser.add_argument("--think", type=float, default=0.0, help="pause between a client's polls (seconds)")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    if args.phase in ("all", "first-submit"):
        for line in first_submit_phase(args.first_repeats, args.database_url):
            print(line, flush=True)
    if args.phase == "first-submit":
        return 0
    database_url, drop_schema = _database(args.database_url, args.postgres)
    try:
        return _load_phase(args, database_url)
    finally:
        drop_schema()


def _database(database_url: str | None, postgres: str | None) -> tuple[str | None, Callable[[], None]]:
    """The database URL of the load phase: ``--database-url`` as given, or a fresh schema on the ``--postgres``
    server (dropped afterwards), or None (a fresh SQLite file)."""
    if postgres is None:
        return database_url, lambda: None
    from sqlalchemy import create_engine, text

    schema = f"mpq_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return f"{postgres}?options=-csearch_path%3D{schema}", drop


def _load_phase(args: argparse.Namespace, database_url: str | None) -> int:
    """Job creation, then status polls at each ``--clients`` count, while background jobs keep the worker busy."""
    counts = [int(value) for value in str(args.clients).split(",") if value.strip()]
    root = Path(tempfile.mkdtemp(prefix="mpq-bench-"))
    extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
    server, url, key = _start_server(root, database_url, *extra)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/jobs", json=BACKGROUND_JOB, headers=headers, timeout=600)
        response.raise_for_status()
        cold_validation = time.perf_counter() - start
        job_id = response.json()["id"]
        polled = job_id
        for _ in range(args.background - 1):  # queued behind it: the worker stays busy however long we poll
            queued = httpx.post(f"{url}/v1/jobs", json=BACKGROUND_JOB, headers=headers, timeout=600)
            queued.raise_for_status()
            polled = queued.json()["id"]
        for _ in range(600):
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            if job["status"] == "running" and job["stage"] not in (None, "load"):
                break
            if job["status"] not in ("queued", "running"):
                raise SystemExit(f"background job ended early: {job['status']} {job['error']}")
            time.sleep(0.5)
        if args.poll == "running":
            polled = job_id
        database = (database_url or "sqlite").split(":")[0]
        size = len(httpx.get(f"{url}/v1/jobs/{polled}", headers=headers).content)
        print(
            f"\nmpq API latency{f' ({args.label})' if args.label else ''}: database {database}, "
            f"{args.workers} API process(es), {os.cpu_count()} CPU cores, think time {args.think:g}s, "
            f"{args.duration:g}s of polling per row; polled: the {args.poll} job (body {size} bytes at the start) "
            f"while the embedded worker runs another; first POST /v1/jobs of this configuration "
            f"(cold validate_config) {cold_validation:.1f} s"
        )
        print(
            "\n| operation              | clients | requests | errors | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) "
            "|   req/s | CPU ms/req | body (B) | load avg 1m |"
        )
        print(
            "|------------------------|--------:|---------:|-------:|---------:|---------:|---------:|---------:"
            "|--------:|-----------:|---------:|------------:|"
        )
        if args.creates:
            start, cpu = time.perf_counter(), _api_cpu_seconds(server.pid)
            create_lat, _created, create_errors = asyncio.run(
                _create_phase(url, key, max(counts), args.creates)
            )
            cpu = _api_cpu_seconds(server.pid) - cpu
            print(_row("POST /v1/jobs", max(counts), create_lat, create_errors, time.perf_counter() - start, 0, cpu))
        worst = 0.0
        seen: set[str] = set()
        for clients in counts:
            size = len(httpx.get(f"{url}/v1/jobs/{polled}", headers=headers).content)
            start, cpu = time.perf_counter(), _api_cpu_seconds(server.pid)
            poll_lat, poll_errors, statuses = asyncio.run(
                _poll_phase(url, key, polled, clients, args.duration, args.think)
            )
            cpu = _api_cpu_seconds(server.pid) - cpu
            seen |= statuses
            seconds = time.perf_counter() - start
            print(_row("GET /v1/jobs/{id}", clients, poll_lat, poll_errors, seconds, size, cpu), flush=True)
            if clients >= 20:
                worst = max(worst, _percentile([v * 1000 for v in poll_lat], 99))
        running = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
        print(f"\nstatuses seen by the polls: {sorted(seen)}; the worker's job at the end: {running['status']}")
        print(f"status-poll p99 at >= 20 clients {worst:.1f} ms: {'meets' if worst < 100 else 'misses'} the "
              "100 ms target")
        for job in httpx.get(f"{url}/v1/jobs", params={"limit": 100}, headers=headers).json()["data"]:
            if job["status"] in ("queued", "running"):
                httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", headers=headers)
        return 0
    finally:
        _stop(server)


if __name__ == "__main__":
    raise SystemExit(main())
