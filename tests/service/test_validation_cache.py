"""The API remembers configurations that passed ``validate_config`` and validates each one once at a time."""

from __future__ import annotations

import threading
import uuid

import pytest

from quant.config import DataSpec, ModelSpec, PipelineConfig
from service.errors import UnprocessableEntity
from service.job import pipeline as gateway
from tests.waiting import wait_until


class _CountingPipeline:
    """Stands in for quant.pipeline's validate_config to count calls (the real one takes seconds)."""

    class PipelineInputError(ValueError):
        def __init__(self, code: str, message: str, details: dict | None = None) -> None:
            super().__init__(message)
            self.code, self.message, self.details = code, message, details or {}

    def __init__(self, fail: bool = False, release: threading.Event | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.release = release  # a validation runs until the test sets it (None: returns at once)
        self.lock = threading.Lock()

    def validate_config(self, _config: PipelineConfig) -> None:
        with self.lock:
            self.calls += 1
        if self.release is not None:
            self.release.wait(timeout=300)
        if self.fail:
            raise self.PipelineInputError("invalid_bits", "bits 7 not allowed", {"bits": 7})


def _config(source: str = "builtin:digits") -> PipelineConfig:
    return PipelineConfig(
        model=ModelSpec(name=f"builtin:vit-digits-{uuid.uuid4().hex}"), data=DataSpec(source=source)
    )


def test_concurrent_identical_requests_validate_once(monkeypatch) -> None:
    release = threading.Event()
    fake = _CountingPipeline(release=release)
    monkeypatch.setattr(gateway, "pipeline_module", lambda: fake)
    config = _config()
    arrived = threading.Semaphore(0)

    def request() -> None:
        arrived.release()
        gateway.validate(config)

    threads = [threading.Thread(target=request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for _ in threads:  # every request is under way...
        assert arrived.acquire(timeout=300)
    wait_until(lambda: fake.calls, 300, message="the first validation to start")
    release.set()  # ...while the first validation runs: the others wait for it or find its result cached
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    gateway.validate(config)
    assert fake.calls == 1


def test_failures_are_not_remembered_and_map_to_422(monkeypatch) -> None:
    fake = _CountingPipeline(fail=True)
    monkeypatch.setattr(gateway, "pipeline_module", lambda: fake)
    config = _config()
    for _ in range(2):
        with pytest.raises(UnprocessableEntity) as info:
            gateway.validate(config)
        assert info.value.code == "invalid_bits" and info.value.details == {"bits": 7}
    assert fake.calls == 2


def test_image_folders_are_never_cached(monkeypatch) -> None:
    fake = _CountingPipeline()
    monkeypatch.setattr(gateway, "pipeline_module", lambda: fake)
    config = _config(source="folder:/data/imagenet/val")
    gateway.validate(config)
    gateway.validate(config)
    assert fake.calls == 2
