"""glibc ``malloc`` settings for the CPU reconstruction loop.

An iteration allocates and frees dozens of activation-sized tensors (MBs each). With glibc's default, dynamic
thresholds, large blocks are returned to the OS when freed (``munmap`` or heap trimming) and the next iteration
pays a page fault per 4 KiB page to touch them again: on the built-in ViT's size (dim 96, batch 32) that measured
~15 % of an iteration. ``tune_cpu_allocator()`` fixes the thresholds once per process (``mallopt``), so freed
blocks stay in the heap and are reused: the process keeps up to ``trim_bytes`` of freed memory instead of giving
it back. Nothing changes numerically.

It does nothing (returns False) where the C library is not glibc, or when the environment variable
``MPQ_MALLOC_TUNE`` is ``0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["tune_cpu_allocator"]

_log = logging.getLogger(__name__)

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

_done: bool | None = None


def tune_cpu_allocator(mmap_bytes: int = 256 << 20, trim_bytes: int = 1 << 30, top_pad_bytes: int = 64 << 20) -> bool:
    """Set glibc's mmap threshold (blocks below it come from the heap), trim threshold (free memory kept at the
    heap top before it is returned) and top pad (extra bytes requested per heap growth), in bytes; once per
    process. Returns True when the settings are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MPQ_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, mmap_bytes), (_M_TRIM_THRESHOLD, trim_bytes), (_M_TOP_PAD, top_pad_bytes)))
    if not ok:
        _log.info("mallopt rejected a setting; the default allocator thresholds stay partly in effect")
    _done = ok
    return ok
