"""Folders named by the user: a run id under `--out`, a sweep name under `results/sweeps/`.

A name the user chooses becomes one path component under a root the harness owns; `child_path`
is where every such path is made, so none of them can reach outside its root ("../x", "/x",
"a/b") or hide itself (".x", the prefix of the harness's own temporaries).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.errors import ConfigError

PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")
PLAIN_NAME_RULE = "letters, digits, _ . = + -, not starting with '.'"


def check_plain_name(name: str, what: str, root: str | os.PathLike) -> str:
    """`name` if it is one plain path component; a ConfigError naming `what` otherwise."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is not a plain directory name ({PLAIN_NAME_RULE}); it must stay "
            f"inside {root}"
        )
    return name


def child_path(root: str | os.PathLike, name: str, what: str) -> Path:
    """`root / name` for a user-chosen `name`, refused unless it stays inside `root`."""
    return Path(root) / check_plain_name(name, what, root)
