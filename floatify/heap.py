"""Keep freed heap for reuse while training on CPU (glibc), as PyTorch's CUDA caching allocator does on GPU.

reason: a FLOAT training step holds its noisy weights (one weight-sized set) on top of the attack's memory, so its
heap reaches higher than plain PGD-AT's. Under glibc's default (dynamic) thresholds the free heap top is returned
to the system (``brk``) when the gradients are freed at ``zero_grad``, and the next attack and backward fault it back
in page by page: thousands of minor page faults per step, about 1-3 % of a resnet18/34 step on CPU
(benchmarks/RESULTS.md). Inside :func:`keep_freed_heap` glibc keeps up to 1 GiB of freed heap top and serves blocks
up to 32 MiB from the heap, so a step reuses the previous step's pages. The price is resident memory: the process
stays at its peak between steps, and the kept heap's holes can raise that peak (a FLOAT resnet34's by about 6 %).

On leaving, the kept heap is returned (``malloc_trim``) and glibc's thresholds are set where its own dynamic
adjustment tops out (32 MiB mmap, 64 MiB trim): ``mallopt`` cannot turn that adjustment back on, and its 128 KiB
starting values would make every later tensor of 128 KiB or more a fresh mapping, faulted in on each use (an
evaluation after training ran 1.2x slower that way).

Nothing is changed where it would not help or would override a choice: off glibc (macOS, Windows, musl), under an
allocator preloaded in its place (``LD_PRELOAD`` of jemalloc, tcmalloc, ...), and when the process was started
with a glibc malloc tunable in its environment (``MALLOC_*_``, ``GLIBC_TUNABLES=glibc.malloc.*``).

Example (your own CPU training loop; ``floatify.fit`` does this itself):
    >>> from floatify.heap import heap_tunable, keep_freed_heap
    >>> with keep_freed_heap() as tuned:
    ...     pass  # the training steps
    >>> tuned == (heap_tunable() is None)  # tuned unless off glibc or MALLOC_*_ is set
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

__all__ = ["keep_freed_heap", "heap_tunable"]

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_TRIM_THRESHOLD = 2**30
"""Free heap top glibc keeps instead of returning it (bytes)."""
KEEP_MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
"""Largest block served from the heap rather than its own mapping: glibc's maximum (32 MiB on 64-bit)."""
AFTER_MMAP_THRESHOLD = KEEP_MMAP_THRESHOLD
AFTER_TRIM_THRESHOLD = 2 * AFTER_MMAP_THRESHOLD
"""The thresholds left on leaving: where glibc's dynamic adjustment tops out (the trim threshold follows 2x mmap)."""

_lock = threading.Lock()
_depth = 0


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def heap_tunable() -> str | None:
    """Why :func:`keep_freed_heap` would leave the allocator alone here, or None when it would tune it."""
    if _libc() is None:
        return "not glibc"
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # reason: jemalloc, tcmalloc, mimalloc: glibc's malloc is not the one in use
        return f"LD_PRELOAD replaces malloc ({preload})"
    user = sorted(k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_"))
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return f"the environment sets {', '.join(user)}"
    return None


@contextlib.contextmanager
def keep_freed_heap() -> Iterator[bool]:
    """Inside the block glibc keeps freed heap for reuse; yields whether it was tuned (see the module docstring).

    Nested blocks are one block: the outermost one sets and resets glibc. The setting is process-wide (every
    thread).
    """
    global _depth
    libc = _libc() if heap_tunable() is None else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
            libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.malloc_trim(0)
                libc.mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                libc.mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
