"""Keep freed heap for reuse while training on CPU (glibc), as PyTorch's CUDA caching allocator does on GPU.

reason: a FLOAT training step holds its noisy weights (one weight-sized set) on top of the attack's memory, so its
heap reaches higher than plain PGD-AT's. Under glibc's default (dynamic) thresholds the free heap top is returned
to the system (``brk``) when the gradients are freed at ``zero_grad``, and the next attack and backward fault it back
in page by page: thousands of minor page faults per step (benchmarks/RESULTS.md, a process holding only the two
models: a FLOAT step 1.038x (resnet18) / 1.039x (resnet34) a plain PGD-AT step with the heap kept, 1.067x / 1.060x
with glibc's default; over three runs the gain was 1-3 %, about the run-to-run spread).

It is opt-in: a library must not change its host's allocator unasked. ``floatify.fit(keep_freed_heap=True)``
(``floatify train --keep-freed-heap``) wraps its training in :func:`keep_freed_heap`. Instead, an allocator that
keeps freed memory for reuse can be preloaded for the whole process, leaving glibc alone (not measured in
benchmarks/): ``LD_PRELOAD=libjemalloc.so.2 python train.py`` (or ``libtcmalloc.so.4``).

Inside :func:`keep_freed_heap` glibc returns no freed heap top under 1 GiB and serves blocks under 32 MiB (the
ceiling of its own dynamic adjustment) from the heap, so a step reuses the previous step's pages; larger blocks stay
mappings of their own, faulted in on each use, for plain and FLOAT models alike. The price is resident memory: the
process stays at its peak between steps, and the kept heap's holes can raise that peak (a FLOAT resnet18's or
resnet34's by up to 10 % in benchmarks/cost.py).

On leaving, the kept heap is returned (``malloc_trim``) and glibc's thresholds are set where its own dynamic
adjustment tops out (32 MiB mmap, 64 MiB trim): ``mallopt`` cannot turn that adjustment back on, and its 128 KiB
starting values would make every later tensor of 128 KiB or more a fresh mapping, faulted in on each use (an
evaluation after training ran 1.2x slower that way). So a process that trained keeps those thresholds.

Nothing is changed where it would not help or would override a choice: off glibc (macOS, Windows, musl), under an
allocator preloaded in glibc's place (jemalloc, tcmalloc, ...: ``malloc`` does not resolve to glibc's), and when
the environment sets one of these glibc settings (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or their ``GLIBC_TUNABLES=glibc.malloc.*`` spelling).

Example (your own CPU training loop; ``floatify.fit(keep_freed_heap=True)`` does this itself):
    >>> from floatify.heap import heap_tunable, keep_freed_heap
    >>> reason = heap_tunable()  # None, or why the allocator would be left alone here
    >>> with keep_freed_heap() as tuned:
    ...     pass  # the training steps
    >>> tuned == (reason is None)
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
"""Blocks under this come from the heap: the ceiling of glibc's dynamic adjustment (32 MiB on 64-bit)."""
AFTER_MMAP_THRESHOLD = KEEP_MMAP_THRESHOLD
AFTER_TRIM_THRESHOLD = 2 * AFTER_MMAP_THRESHOLD
"""The thresholds left on leaving: where glibc's dynamic adjustment tops out (the trim threshold follows 2x mmap)."""

_lock = threading.Lock()
_depth = 0


_GLIBC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_GLIBC_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.top_pad",
                   "glibc.malloc.mmap_max")


def _glibc_version() -> str | None:
    """glibc's version string as the C library reports it (None off glibc)."""
    try:  # reason: the C library's own answer, where platform.libc_ver() scans the Python binary for a marker
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return version if version and version.startswith("glibc") else None


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or _glibc_version() is None:
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _malloc_is_glibcs(libc: ctypes.CDLL) -> bool:
    """True when the process's ``malloc`` is glibc's (not one preloaded in its place)."""
    process = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    return process == ctypes.cast(libc.malloc, ctypes.c_void_p).value


def heap_tunable() -> str | None:
    """Why :func:`keep_freed_heap` would leave the allocator alone here, or None when it would tune it."""
    libc = _libc()
    if libc is None:
        return "not glibc"
    if not _malloc_is_glibcs(libc):
        return "malloc is not glibc's (an allocator preloaded in its place)"
    user = [k for k in _GLIBC_SETTINGS if k in os.environ]
    if any(t in os.environ.get("GLIBC_TUNABLES", "") for t in _GLIBC_TUNABLES):
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
        if _depth == 0 and not (libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
                                and libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD)):
            # reason: glibc refused a value (mallopt returns 0): the thresholds a block leaves, and no block
            libc.mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
            libc.mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
            tuned = False
        else:
            _depth += 1
            tuned = True
    if not tuned:
        yield False
        return
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.malloc_trim(0)
                libc.mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                libc.mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
