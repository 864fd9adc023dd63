"""keep_freed_heap: glibc keeps freed heap for reuse inside the block, and gives it back on leaving."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

import floatify.heap as heap

from helpers import RecordingLibc, use_libc

KEEP = [("mallopt", -1, heap.KEEP_TRIM_THRESHOLD), ("mallopt", -3, heap.KEEP_MMAP_THRESHOLD)]
RESTORE = [("malloc_trim", 0), ("mallopt", -1, heap.AFTER_TRIM_THRESHOLD), ("mallopt", -3, heap.AFTER_MMAP_THRESHOLD)]


@pytest.fixture
def libc(monkeypatch):
    fake = RecordingLibc()
    use_libc(monkeypatch, fake)
    return fake


def test_the_block_sets_glibc_to_keep_and_resets_it_once(libc):
    with heap.keep_freed_heap() as active:
        assert active and libc.calls == KEEP
        with heap.keep_freed_heap() as inner:  # nested: one block, nothing set again or restored early
            assert inner
        assert libc.calls == KEEP
    assert libc.calls == KEEP + RESTORE


def test_the_defaults_come_back_when_the_block_raises(libc):
    with pytest.raises(KeyError), heap.keep_freed_heap():
        raise KeyError
    assert libc.calls == KEEP + RESTORE


@pytest.mark.parametrize("refused", [-1, -3])
def test_a_value_glibc_refuses_leaves_the_block_untuned(monkeypatch, refused):
    fake = RecordingLibc(refuse=[refused])
    use_libc(monkeypatch, fake)
    with heap.keep_freed_heap() as active:
        assert not active
        assert fake.calls[-2:] == RESTORE[1:], "the thresholds a block leaves, set at once"
        n = len(fake.calls)
    assert len(fake.calls) == n, "nothing more on leaving"


@pytest.mark.parametrize("env, libc_found, glibc_malloc, reason", [
    ({"MALLOC_TOP_PAD_": "0"}, True, True, "the environment sets MALLOC_TOP_PAD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, True, True, "the environment sets GLIBC_TUNABLES"),
    ({"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}, True, True,
     "the environment sets MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_"),
    ({}, True, False, "malloc is not glibc's"),
    ({}, False, True, "not glibc"),
])
def test_a_user_setting_or_another_allocator_is_left_alone(monkeypatch, env, libc_found, glibc_malloc, reason):
    fake = RecordingLibc()
    use_libc(monkeypatch, fake, glibc_malloc)
    if not libc_found:
        monkeypatch.setattr(heap, "_libc", lambda: None)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert heap.heap_tunable().startswith(reason)
    with heap.keep_freed_heap() as active:
        assert not active
    assert fake.calls == []


@pytest.mark.parametrize("env", [{"MALLOC_PERTURB_": "7"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_settings_that_do_not_touch_the_thresholds_do_not_stop_it(libc, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert heap.heap_tunable() is None


@pytest.mark.skipif(heap._libc() is None, reason="glibc only")
def test_this_process_malloc_is_recognised_as_glibcs():
    libc = heap._libc()
    assert libc is not None and heap._malloc_is_glibcs(libc) == ("malloc" not in os.environ.get("LD_PRELOAD", ""))


@pytest.mark.skipif(heap._libc() is None, reason="glibc only")
def test_freed_heap_stays_resident_inside_the_block_and_is_returned_after():
    # reason: a fresh process, where glibc's dynamic thresholds still have their initial 128 KiB. Three 24 MiB
    # blocks: each under the 32 MiB mmap threshold (so from the heap), 72 MiB together over the 64 MiB trim threshold
    # left after the block
    code = textwrap.dedent("""
        import ctypes
        from floatify.heap import keep_freed_heap
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
        def touched_then_freed():  # RSS growth left behind by three freed 24 MiB blocks
            before = rss()
            blocks = [libc.malloc(24 << 20) for _ in range(3)]
            for p in blocks:
                ctypes.memset(p, 1, 24 << 20)
            for p in reversed(blocks):
                libc.free(p)
            return rss() - before
        with keep_freed_heap():
            kept = touched_then_freed()
            inside = rss()
        returned = inside - rss()
        print(kept, returned, touched_then_freed())
    """)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    kept, returned, after = map(int, out.stdout.split())
    assert kept >= 64, "inside the block the freed 72 MiB stay resident for reuse"
    assert returned >= 64, "leaving the block returns the kept heap"
    assert after < 8, "after the block glibc returns a freed heap top over 64 MiB again"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_is_recognised_where_python_runs_on_it():
    assert heap._glibc_version().startswith("glibc ") and heap._libc() is not None
