"""Atomic file writes: a reader sees either the old file or the complete new one, never a part.

Every artefact the harness writes (checkpoints, descriptors, predictions, records, generated
benchmarks) goes through these helpers: write to a temporary sibling, fsync, then `os.replace`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        try:
            yield tmp
        except Exception as err:
            # torch.save reports a full disk as an opaque RuntimeError and h5py as an OSError
            # without a file name: name the file while the half-written temporary still fills
            # the disk, so the CLI can say what happened and how to go on.
            named = isinstance(err, OSError) and err.filename is not None
            full = getattr(err, "errno", None) == errno.ENOSPC or _out_of_space(path.parent)
            if not named and full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def _out_of_space(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < _FULL_DISK_BYTES
    except OSError:
        return False


_FULL_DISK_BYTES = 1 << 20  # less free than this after a failed write: the disk filled up
_TEMPORARY = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{8}")


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete the temporaries `atomic_path` left under `directory` when a writer was killed.

    Only safe while no other process writes there (a run directory under its lock). Returns the
    number of files removed.
    """
    removed = 0
    for path in Path(directory).rglob(".*.tmp-*"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when complete.

    An interrupted build leaves only a hidden `.NAME.partial-*` folder, never something that looks
    finished. With `overwrite`, an existing `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            trash = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def exclusive_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created if missing) between processes.

    For read-modify-write of shared files (a sweep's manifest, the benchmark cache). An flock dies
    with its process, so a killed holder never leaves a stale lock. Without fcntl (not POSIX) this
    does not lock; the atomic renames still keep every file whole.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
