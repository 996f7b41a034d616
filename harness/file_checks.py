"""Checks on the files a user names on the command line, made before anything is read or written.

An input must be a readable regular file (not missing, not a directory, not a FIFO that a second
read would find empty); an output must never be one of the command's inputs, since writing it would
destroy what the command reads. Each problem is one OutputError or InputError line.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from harness.errors import InputError, OutputError

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def require_input_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is a regular file this process can open; InputError otherwise."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(
            f"{path}: cannot be read ({err.strerror}); check its permissions"
        ) from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, expected a file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
        # A pipe can be read once only, and our readers read twice (a fast pass, then a checking one).
        raise InputError(
            f"{path}: is a {kind}, not a regular file; save its content to a file and pass that"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise InputError(
            f"{path}: cannot be read ({err.strerror}); check its permissions"
        ) from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file: the same inode when both exist (hard and symbolic links
    included), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def refuse_overwriting_inputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | None],
) -> None:
    """Raise OutputError when an output names one of the inputs, another output, or a directory.

    Both mappings go from the option as the user typed it (`--pr-curve`) to its path; None (an
    option not given) is skipped. Call it before reading anything, so a refusal costs nothing."""
    given_inputs = [(option, Path(path)) for option, path in inputs.items() if path is not None]
    given_outputs = [(option, Path(path)) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given_outputs):
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a directory; give a file name")
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise OutputError(f"{option} {path}: {blocking} is a file, not a folder")
        for input_option, input_path in given_inputs:
            if _same_file(path, input_path):
                raise OutputError(
                    f"{option} {path} would overwrite the input {input_option} {input_path}; "
                    "choose another output file"
                )
        for other_option, other_path in given_outputs[:i]:
            if _same_file(path, other_path):
                raise OutputError(
                    f"{other_option} and {option} name the same file {path}; give each its own"
                )


@contextmanager
def writing_output(option: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write of an output (read-only folder, a file where a folder is needed, a full
    disk) into one OutputError line; the writers are atomic, so nothing half-written is left."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(
            f"{option} {path}: cannot write it ({reason}); choose another location"
        ) from None
