"""Every file floatify writes goes through here: atomic, never through a symlink, no leftovers.

:func:`atomic_write` (bytes or text) and :func:`atomic_path` (a context manager that yields a temporary
path for writers that want a file name, e.g. ``matplotlib``'s ``savefig``) both:

* create a fresh temporary file in the target's folder under a random name, opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a planted file or symlink is never followed or reused),
* flush and ``fsync`` it, then ``os.replace`` it onto the target (a symlink at the target is replaced
  itself, never followed; readers see the old file or the complete new one, never a half-written one),
* remove the temporary on any failure.

A process killed mid-write leaves its temporary behind; :func:`remove_stale_temporaries` (called at the
start of every training run) removes those whose writer is gone. Their names are
``.<target>.<pid>.<random>.floatify-tmp``.

Example:
    >>> import os, tempfile
    >>> from floatify.io import atomic_write, atomic_path
    >>> folder = tempfile.mkdtemp()
    >>> atomic_write(os.path.join(folder, "doc.txt"), "hello").read_text()
    'hello'
    >>> with atomic_path(os.path.join(folder, "doc.bin")) as tmp:
    ...     _ = tmp.write_bytes(b"written by name")
    >>> sorted(os.listdir(folder))  # no temporaries left
    ['doc.bin', 'doc.txt']
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "atomic_path", "remove_stale_temporaries", "TMP_SUFFIX", "replace_folder",
           "remove_stale_staging", "read_safetensors", "first_non_finite", "STAGING_SUFFIX"]

TMP_SUFFIX = ".floatify-tmp"
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{16}" + re.escape(TMP_SUFFIX) + "$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary beside ``path``: (open fd for writing, its path)."""
    for _ in range(16):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(f"could not create a fresh temporary file beside {path}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # reason: not every platform/file system can fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    The temporary exists (empty, created exclusively) when yielded: write into it by name, e.g.
    ``fig.savefig(tmp)`` or ``safetensors.torch.save_file(state, tmp)``. On an exception it is removed
    and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = _create_temporary(path)
    os.close(fd)
    try:
        yield tmp
        if tmp.is_symlink() or not tmp.is_file():
            raise OSError(f"temporary file {tmp} was replaced while being written; {path} left unchanged")
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # reason: e.g. PermissionError: the process exists (another user's)
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove floatify temporaries in ``folder`` left by writers that no longer run; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def read_safetensors(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
                     hint: str = "", *, finite: bool = True) -> tuple[dict, dict]:
    """``(tensors, header metadata)`` of a safetensors file; any damage raises ``error`` with one line naming
    ``what`` and ``path`` ("truncated or corrupted or not a safetensors file") plus ``hint``. Reading it runs no
    code (safetensors holds tensors and a JSON header only). With ``finite`` a floating-point tensor holding NaN or
    ±inf is damage too (:func:`first_non_finite`); the caller that names its tensors itself passes False."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            tensors, header = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # reason: safetensors raises several types for damaged files
        raise error(f"{what} {path} is truncated or corrupted or not a safetensors file ({err}){hint}") from None
    bad = first_non_finite(tensors) if finite else None
    if bad is not None:
        raise error(f"{what} {path} holds non-finite values (NaN or inf) in tensor '{bad}'; it cannot be used"
                    f"{hint}")
    return tensors, header


def first_non_finite(tensors) -> str | None:
    """The name of the first floating-point tensor in ``tensors`` (a mapping, or a nest of dicts, lists and tuples:
    names joined by dots) holding NaN or ±inf; None when every value is finite.

    Example:
        >>> import torch
        >>> from floatify.io import first_non_finite
        >>> first_non_finite({"model": {"w": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}})
        'model.b'
        >>> first_non_finite({"steps": torch.tensor([3])}) is None
        True
    """
    import torch

    stack: list[tuple[str, object]] = [("", tensors)]
    while stack:
        name, value = stack.pop(0)
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                return name
        elif isinstance(value, dict):
            stack[:0] = [(f"{name}.{k}" if name else str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack[:0] = [(f"{name}.{i}" if name else str(i), v) for i, v in enumerate(value)]
    return None


# ------------------------------------------------------------------------------ folders replaced in one step
STAGING_SUFFIX = ".floatify-staging"
_STAGING_RE = re.compile(r"^\..+\.([0-9a-f]{8})\.(\d+)\.[0-9a-f]{16}" + re.escape(STAGING_SUFFIX) + "$")


def _host_tag() -> str:
    """reason: a process id means a process on this host only; a shared (NFS) folder holds other hosts' staging"""
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_RENAME_EXCHANGE = 2  # reason: Linux renameat2 flag; swaps two paths atomically


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` atomically (Linux ``renameat2``); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # reason: EINVAL/ENOSYS/EOPNOTSUPP: the file system cannot exchange; fall back
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _swap_into_place(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target``; a folder already there is replaced, then removed."""
    import shutil

    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
    elif _exchange(staging, target):
        # reason: after the exchange the old folder sits at the staging path; the new run is in place whatever
        # of the old one cannot be removed (a busy file), and a later run's remove_stale_staging retries it
        shutil.rmtree(staging, ignore_errors=True)
    else:
        old = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.floatify-replaced"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)  # reason: the old folder stays in place when the new one cannot move in
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def replace_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on a clean exit it becomes ``target`` in one step.

    A folder already at ``target`` survives, untouched, until the new one is complete; it is then replaced as a
    whole (swapped atomically where the system can: Linux ``renameat2``). On any failure the staging folder is
    removed and ``target`` is byte-identical to before. A symlink at ``target`` is refused, never followed.

    Example:
        >>> import os, tempfile
        >>> from floatify.io import replace_folder
        >>> root = tempfile.mkdtemp()
        >>> with replace_folder(os.path.join(root, "run")) as staging:
        ...     _ = (staging / "a.txt").write_text("new")
        >>> sorted(os.listdir(root)), sorted(os.listdir(os.path.join(root, "run")))
        (['run'], ['a.txt'])
    """
    import shutil

    target = Path(target)
    if target.is_symlink():  # reason: never replace (and delete) what a planted link points to
        raise NotADirectoryError(f"{target} is a symlink; name the folder itself, or choose another path")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    staging = target.parent / f".{target.name}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(8)}{STAGING_SUFFIX}"
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove staging folders in ``folder`` left by :func:`replace_folder` callers that no longer run."""
    import shutil

    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING_RE.match(str(entry.name))
        if match and match.group(1) == _host_tag() and entry.is_dir(follow_symlinks=False) \
                and not _alive(int(match.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed
