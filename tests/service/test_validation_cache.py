"""The API remembers configurations that passed ``validate_config`` and validates each one once at a time."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from quant.config import DataSpec, ModelSpec, PipelineConfig
from service.job import pipeline as gateway
from service.kit.errors import UnprocessableEntity


class _CountingPipeline:
    """Stands in for quant.pipeline's validate_config to count calls (the real one takes seconds)."""

    class PipelineInputError(ValueError):
        def __init__(self, code: str, message: str, details: dict | None = None) -> None:
            super().__init__(message)
            self.code, self.message, self.details = code, message, details or {}

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.lock = threading.Lock()

    def validate_config(self, _config: PipelineConfig) -> None:
        with self.lock:
            self.calls += 1
        time.sleep(0.2)
        if self.fail:
            raise self.PipelineInputError("invalid_bits", "bits 7 not allowed", {"bits": 7})


def _config(source: str = "builtin:digits") -> PipelineConfig:
    return PipelineConfig(
        model=ModelSpec(name=f"builtin:vit-digits-{uuid.uuid4().hex}"), data=DataSpec(source=source)
    )


def test_concurrent_identical_requests_validate_once(monkeypatch) -> None:
    fake = _CountingPipeline()
    monkeypatch.setattr(gateway, "pipeline_module", lambda: fake)
    config = _config()
    threads = [threading.Thread(target=gateway.validate, args=(config,)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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
