"""floatify.io: every write is atomic, exclusive, never through a symlink, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import floatify.io
from floatify.io import (
    STAGING_SUFFIX,
    TMP_SUFFIX,
    atomic_path,
    atomic_write,
    remove_stale_staging,
    remove_stale_temporaries,
    replace_folder,
)


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


# ------------------------------------------------------------------------------------- replace_folder
def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
@pytest.mark.parametrize("old", [True, False], ids=["replaces", "creates"])
def test_replace_folder_puts_the_complete_new_folder_in_place(tmp_path, monkeypatch, exchange, old):
    if not exchange:
        monkeypatch.setattr(floatify.io, "_exchange", lambda a, b: False)
    target = tmp_path / "run"
    if old:
        target.mkdir()
        (target / "old.txt").write_text("old")
    with replace_folder(target) as staging:
        (staging / "new.txt").write_text("new")
        assert _tree(target) == ({"old.txt": b"old"} if old else {}), "the old folder stays until the new is done"
    assert _tree(target) == {"new.txt": b"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_replacement_leaves_the_old_folder_byte_identical(tmp_path):
    target = tmp_path / "run"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "a.bin").write_bytes(b"\x00\x01")
    before = _tree(target)
    with pytest.raises(OSError), replace_folder(target) as staging:
        (staging / "half.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert _tree(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# what is at the target -> the error
REFUSED = [
    ("a symlink to a folder", lambda t: (t.parent / "real").mkdir() or t.symlink_to(t.parent / "real"), "is a symlink"),
    ("a dangling symlink", lambda t: t.symlink_to(t.parent / "nowhere"), "is a symlink"),
    ("a file", lambda t: t.write_text("x"), "is not a folder"),
]


@pytest.mark.parametrize("name, make, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_replace_folder_refuses_what_it_must_not_replace(tmp_path, name, make, message):
    target = tmp_path / "run"
    make(target)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(NotADirectoryError, match=message), replace_folder(target):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_stale_staging_of_dead_processes_on_this_host_is_removed(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    host = floatify.io._host_tag()
    stale = tmp_path / f".run.{host}.{dead}.0123456789abcdef{STAGING_SUFFIX}"
    live = tmp_path / f".run.{host}.{os.getpid()}.0123456789abcdef{STAGING_SUFFIX}"
    elsewhere = tmp_path / f".run.{'0' * 8 if host != '0' * 8 else '1' * 8}.{dead}.0123456789abcdef{STAGING_SUFFIX}"
    for folder in (stale, live, elsewhere):
        folder.mkdir()
    assert remove_stale_staging(tmp_path) == [stale]
    assert live.exists() and elsewhere.exists(), "a live writer's and another host's staging are left alone"
