"""A real ``mlflow server`` (SQLite backend store, local artifact root) on a free loopback port, shared by the
tracking tests of one session; fails in CI (``CI=true``) and skips locally when it cannot start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.components import missing_component
from tests.waiting import WaitTimeout, wait_until

from .server import free_port

__all__ = ["mlflow_server"]


def _unavailable(reason: str) -> None:
    """Fail in CI (``CI=true``), skip locally: the MLflow server is a required real component."""
    missing_component(f"MLflow server: {reason}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend store and a local artifact root, on a free loopback port."""
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the mlflow package is not installed ({exc}); pip install -e .[dev]")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            _unavailable(f"mlflow server exited with {process.returncode}: {log_tail()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail() -> str:
        return (root / "server.log").read_text()[-2000:]

    try:
        try:
            wait_until(healthy, 300, interval=0.5, message="the mlflow server to be healthy")
        except WaitTimeout as exc:
            _unavailable(f"{exc}: {log_tail()}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
