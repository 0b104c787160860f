"""Run ``mpq serve`` in a subprocess on a free port (real uvicorn, real embedded worker process)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.waiting import wait_until

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One ``mpq serve`` process; ``start()`` again after ``kill()`` restarts it on the same port and data."""

    def __init__(self, database_url: str, root: Path, *args: str, **env: str) -> None:
        self.args = args  # extra ``mpq serve`` arguments (e.g. --workers 2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log_path = root / "server.log"
        self.env = {
            **os.environ,
            "MPQ_DATABASE_URL": database_url,
            "MPQ_ARTIFACT_DIR": str(root / "artifacts"),
            "MPQ_HEARTBEAT_INTERVAL": "0.5",
            "MPQ_WORKER_POLL_INTERVAL": "0.2",
            "MPQ_LOG_LEVEL": "info",
            "MPQ_API_KEY": "",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.api_key: str | None = None

    def start(self, timeout: float = 180.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        wait_until(self._ready, timeout, interval=0.2, message=lambda: f"server ready\n{self.log_tail()}")
        if self.api_key is None:
            match = re.search(r"MPQ_API_KEY=(\S+)", self.log_path.read_text())
            self.api_key = match.group(1) if match else None

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_pids(self) -> list[int]:
        """Pids of the embedded worker process(es) of the running server."""
        if self.process is None:
            return []
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], check=False, capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the server process only (its worker must die with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then make sure the whole process group is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
