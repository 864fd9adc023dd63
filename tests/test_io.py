"""floatify.io: every write is atomic, exclusive, never through a symlink, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from floatify.io import TMP_SUFFIX, atomic_path, atomic_write, remove_stale_temporaries


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX))


def _write_bytes(path, data):
    atomic_write(path, data)


def _write_by_name(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


WRITERS = [_write_bytes, _write_by_name]


@pytest.mark.parametrize("write", WRITERS)
def test_replaces_a_symlink_instead_of_writing_through_it(tmp_path, write):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "report.md"
    target.symlink_to(victim)
    write(target, b"new")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("write", WRITERS)
def test_planted_temporaries_are_never_used(tmp_path, write):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in ("report.md.tmp", ".report.md.tmp", f".report.md.{os.getpid()}.0000000000000000{TMP_SUFFIX}"):
        (tmp_path / name).symlink_to(victim)
    write(tmp_path / "report.md", b"new")
    assert victim.read_text() == "precious" and (tmp_path / "report.md").read_bytes() == b"new"


def test_text_is_utf8_and_the_old_file_survives_a_failed_write(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, "λ ✓")
    assert target.read_text(encoding="utf-8") == "λ ✓"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_text(encoding="utf-8") == "λ ✓" and _leftovers(tmp_path) == []
    with pytest.raises(TypeError):
        atomic_write(target, 3.5)
    assert _leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.safetensors.{int(dead.stdout)}.0123456789abcdef{TMP_SUFFIX}"
    live = tmp_path / f".model.safetensors.{os.getpid()}.0123456789abcdef{TMP_SUFFIX}"
    other = tmp_path / ".model.safetensors.tmp"  # not ours: left alone
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
