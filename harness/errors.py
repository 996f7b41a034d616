"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero.

The CLI (harness/cli.py) is the one place they are caught. Besides HarnessError it turns an
OSError that names a file (a full disk, a read-only or missing folder, a path through a file) into
the same one line with the way out (`os_error_message`): those come from the user's machine and
paths, not from a bug. An OSError without a file name still shows its traceback.
"""

import errno
import os
import re


class HarnessError(Exception):
    """A problem with the user's input or environment, explained in the message."""

    exit_code = 2

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(type(self), args[0]),)
        super().__init__(*args)


# torch re-raises an exception of a DataLoader worker process in the main process as
# `exc_type("Caught <Name> in DataLoader worker process <k>.\nOriginal Traceback ...")`
# (torch.utils.data's ExceptionWrapper.reraise): the same type, but the worker's whole traceback as
# its message. Only the type and that text cross the process boundary, so the original message is
# taken back from the traceback's last line(s), `<module>.<Name>: <message>`: a bad image met by a
# worker is then the one line it is when met in the main process (tests/test_data_layout.py).
_WORKER_PREFIX = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _unwrap_worker_message(kind: type, message: str) -> str:
    if not _WORKER_PREFIX.match(message):
        return message
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = message.rfind(marker)
    return message if at < 0 else message[at + len(marker) :].rstrip("\n")


class InputError(HarnessError):
    """Bad input data: a malformed file, a missing split, NaN descriptors, ..."""


class ConfigError(HarnessError):
    """An invalid configuration: unknown key, wrong type, impossible value."""


class OutputError(HarnessError):
    """An output the command must not or cannot write: one of its own inputs, a directory, ..."""


# The way out, by errno, for an OSError on a file the user named or the harness writes for them.
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free space on that disk and rerun the same command (a run resumes from its last "
    "checkpoint; nothing finished is lost)",
    errno.EDQUOT: "the disk quota is used up: free space and rerun the same command",
    errno.EACCES: "check its permissions, or choose a path you can write (e.g. another --out)",
    errno.EPERM: "check its permissions, or choose a path you can write (e.g. another --out)",
    errno.EROFS: "the file system is read-only: choose a writable path (e.g. another --out)",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder where a file is expected: name a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path or name",
}


def os_error_message(err: OSError) -> str:
    """One line for an OSError on a named file: the path, what went wrong, and the way out."""
    where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    what = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
    hint = _OS_ERROR_HINTS.get(err.errno)
    return f"{where}: {what}" + (f"; {hint}" if hint else "")
