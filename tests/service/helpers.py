"""Small builders shared by the service tests: safetensors payloads, tiny models, running a job in-process."""

from __future__ import annotations

import io
import pickle
import uuid
from typing import Any

import torch
from safetensors.torch import save

#: A 1-block ViT small enough to build in milliseconds: the architecture's own 224x224 input (7x7 patches of 32),
#: width 32, 10 classes.
TINY_VIT = "vit_tiny_patch16_224"
TINY_VIT_KWARGS: dict[str, Any] = {
    "patch_size": 32,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "num_classes": 10,
}
TINY_VIT_IMAGE = 224


def images_bytes(
    n: int = 8, size: int = 32, *, labels: bool = True, channels: int = 3, seed: int = 0
) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"images": torch.randn(n, channels, size, size, generator=generator)}
    if labels:
        tensors["labels"] = torch.randint(0, 10, (n,), generator=generator)
    return save(tensors)


def tiny_vit_weights(**overrides: Any) -> bytes:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT, pretrained=False, **{**TINY_VIT_KWARGS, **overrides})
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def torch_checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buffer)
    return buffer.getvalue()


def raw_pickle_bytes() -> bytes:
    return pickle.dumps({"weight": [0.0, 1.0]}, protocol=4)


def upload(
    client: Any,
    headers: dict[str, str],
    payload: bytes,
    *,
    name: str = "x.safetensors",
    kind: str | None = None,
) -> Any:
    data = {"kind": kind} if kind else None
    return client.post("/v1/artifacts", headers=headers, files={"file": (name, payload)}, data=data)


def run_job_here(client: Any, settings: Any, job_id: str, worker_id: str = "test") -> Any:
    """Run a queued job to its end in this process with the worker's own ``execute_job`` (returns its status)."""
    from service.worker.runner import execute_job

    return execute_job(uuid.UUID(job_id), session_factory=client.app.state.session_factory, settings=settings,
                       worker_id=worker_id)
