"""Scale-out overhead: N small jobs through Celery with 1 and then 2 ``mpq worker`` processes.

Uses PostgreSQL (a fresh schema in ``--pg``) and a broker (``--broker``), the API in-process, and a tiny uploaded
ViT with uniform 4/8-bit jobs so that each job is short. Reports wall time and throughput per worker count, and the
queueing overhead per job: the idle gap a worker spends between finishing one job and starting the next (plus,
for a worker's first job, the time from submission to start). On a 2-core machine expect no compute gain from a
second worker; the point is that the per-job overhead stays well under 1 s.

    python bench/scaleout.py --jobs 8 --broker redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service.app import create_app
from service.auth.service import create_key
from service.settings import Settings

KWARGS = {"patch_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def _inputs(root: Path) -> tuple[Path, Path]:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KWARGS)
    weights, images = root / "w.safetensors", root / "x.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    save_file({"images": torch.randn(8, 3, 224, 224)}, str(images))
    return weights, images


def _run(client: TestClient, spec: dict, jobs: int) -> tuple[float, list[dict]]:
    start = time.monotonic()
    ids = [client.post("/v1/jobs", json={**spec, "seed": i}).json()["id"] for i in range(jobs)]
    done: list[dict] = []
    while len(done) < jobs:
        done = [
            j
            for j in (client.get(f"/v1/jobs/{i}").json() for i in ids)
            if j["status"] in ("succeeded", "failed", "cancelled")
        ]
        time.sleep(0.1)
    wall = time.monotonic() - start
    failed = [j for j in done if j["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not succeed: {failed[0]['error']}")
    return wall, done


def _gaps(jobs: list[dict], worker_of: dict[str, str]) -> list[float]:
    """Idle gap before each job on its worker (first job: since submission)."""
    parse = dt.datetime.fromisoformat
    by_worker: dict[str, list[dict]] = {}
    for job in jobs:
        by_worker.setdefault(worker_of[job["id"]], []).append(job)
    gaps = []
    for runs in by_worker.values():
        runs.sort(key=lambda j: j["started_at"])
        previous_end = None
        for job in runs:
            ready = (
                parse(job["created_at"])
                if previous_end is None
                else max(previous_end, parse(job["created_at"]))
            )
            gaps.append((parse(job["started_at"]) - ready).total_seconds())
            previous_end = parse(job["finished_at"])
    return gaps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    schema = f"mpq_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    database_url = f"{args.pg}?options=-csearch_path%3D{schema}"
    root = Path(tempfile.mkdtemp(prefix="mpq-scaleout-"))
    queue = f"mpq-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url, artifact_dir=root / "artifacts", broker_url=args.broker, celery_queue=queue
    )
    env = {
        **os.environ,
        "MPQ_DATABASE_URL": database_url,
        "MPQ_ARTIFACT_DIR": str(root / "artifacts"),
        "MPQ_BROKER_URL": args.broker,
        "MPQ_CELERY_QUEUE": queue,
        "MPQ_WORKER_THREADS": "1",
        "MPQ_LOG_LEVEL": "info",
    }
    workers: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        with TestClient(create_app(settings)) as client:
            with client.app.state.session_factory() as session:
                client.headers["Authorization"] = f"Bearer {create_key(session, 'bench').key}"
            weights, images = _inputs(root)
            with weights.open("rb") as handle:
                weights_id = client.post("/v1/artifacts", files={"file": ("w.safetensors", handle)}).json()[
                    "id"
                ]
            with images.open("rb") as handle:
                images_id = client.post("/v1/artifacts", files={"file": ("x.safetensors", handle)}).json()[
                    "id"
                ]
            spec = {
                "model": {
                    "name": "vit_tiny_patch16_224",
                    "arch_kwargs": KWARGS,
                    "weights_artifact_id": weights_id,
                },
                "data": {"artifact_id": images_id, "num_calibration": 8, "batch_size": 8},
                "method": {"quantizer": "minmax", "wbits": 4, "abits": 8},
                "device": "cpu",
            }
            for count in (1, 2):
                while len(workers) < count:
                    log = (root / f"worker-{len(workers)}.log").open("wb")
                    workers.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "service.cli", "worker"],
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                deadline = time.monotonic() + 120
                while not all("ready." in (root / f"worker-{i}.log").read_text() for i in range(count)):
                    if time.monotonic() > deadline:
                        raise SystemExit("workers did not start")
                    time.sleep(0.2)
                _run(client, spec, count)  # warm-up: imports and first model build in every worker
                wall, jobs = _run(client, spec, args.jobs)
                worker_of = {}
                for i in range(count):
                    for line in (root / f"worker-{i}.log").read_text().splitlines():
                        if ": started by " in line:
                            worker_of[line.split("job ")[1].split(":")[0]] = str(i)
                gaps = _gaps(jobs, worker_of)
                compute = statistics.mean(
                    (
                        dt.datetime.fromisoformat(j["finished_at"])
                        - dt.datetime.fromisoformat(j["started_at"])
                    ).total_seconds()
                    for j in jobs
                )
                rows.append((count, wall, args.jobs / wall, compute, statistics.mean(gaps), max(gaps)))
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    print(
        f"\n{args.jobs} uniform 4/8-bit jobs on a tiny ViT, broker {args.broker.split(':')[0]}, "
        f"{os.cpu_count()} CPU cores\n"
    )
    print("| workers | wall (s) | jobs/s | mean job run (s) | mean queue gap (s) | max queue gap (s) |")
    print("|--------:|---------:|-------:|-----------------:|-------------------:|------------------:|")
    for count, wall, rate, compute, mean_gap, max_gap in rows:
        print(
            f"| {count:>7} | {wall:>8.1f} | {rate:>6.2f} | {compute:>16.2f} | {mean_gap:>18.3f} | {max_gap:>17.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
