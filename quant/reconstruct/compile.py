"""The training step's compiler and optimizer settings per device."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

__all__ = ["adam_kwargs", "compile_enabled", "maybe_compile"]

_log = logging.getLogger(__name__)


def adam_kwargs(device: torch.device) -> dict:
    """One fused Adam kernel per parameter group (CPU and CUDA) where this torch has it."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def compile_enabled(device: torch.device, setting: str) -> bool:
    """Whether the step is compiled: ``on``; ``auto`` on CUDA unless ``MPQ_RECONSTRUCT_COMPILE=0``; never ``off``."""
    if setting == "auto":
        return device.type == "cuda" and os.environ.get("MPQ_RECONSTRUCT_COMPILE", "1") != "0"
    return setting == "on"


def maybe_compile(fn: Callable, device: torch.device, setting: str) -> Callable:
    """``fn`` compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: the fixed-shape forward and
    backward replay as captured graphs) when :func:`compile_enabled`; otherwise ``fn``. If compilation fails at the
    first call, the eager ``fn`` is used from then on (the failure is logged)."""
    if not compile_enabled(device, setting):
        return fn
    compiled = torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else "default", dynamic=False)
    state = {"fn": compiled}

    def call(*args):
        try:
            out = state["fn"](*args)
            return out.clone() if state["fn"] is compiled else out  # cudagraph outputs are overwritten on replay
        except Exception as exc:  # any compiler failure: fall back to the eager step
            if state["fn"] is fn:
                raise
            _log.warning("torch.compile of the reconstruction step failed (%s); using eager mode", exc)
            state["fn"] = fn
            return fn(*args)

    return call
