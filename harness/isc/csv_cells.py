"""The cells of an ISC CSV (ground truth, predictions) as clean strings, and its optional header.

One rule for every cell of every file: leading and trailing whitespace (Python's `str.strip`,
whatever the quoting) is not part of the value, so `Q00001 `, ` Q00001` and `"Q00001"` are one id.
An id must be non-empty and hold no control character and no double quote. A first line that is
not the expected header must look like the data below it, or it is refused: a header with other
names is never read as a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.errors import InputError
from harness.file_checks import require_input_file

# No id holds a control character, nor a double quote: the remains of a quoted field with
# something before its opening quote, which CSV then reads as part of the value.
FORBIDDEN_IN_IDS = re.compile(r'[\x00-\x1f\x7f-\x9f"]')
# How many data rows the first line is compared with to decide whether it is a header.
SHAPE_SAMPLE = 10_000


def read_cells(path: Path, columns: tuple[str, ...]) -> np.ndarray:
    """All cells as a (lines, len(columns)) object array of stripped str, row i = line i + 1
    (blank lines included, so line numbers stay right); missing trailing fields are "". Fields
    beyond `columns` must be empty (a trailing comma); a line with a non-empty one is an error."""
    require_input_file(path)
    cells = _parse(path, columns)
    if cells.shape[1] > len(columns):
        filled = cells != ""
        bad = np.flatnonzero(filled[:, len(columns) :].any(axis=1))
        if len(bad):
            row = int(bad[0])
            fields = int(np.flatnonzero(filled[row])[-1]) + 1
            raise InputError(
                f"{path}:{row + 1}: {fields} fields, expected {len(columns)} ({','.join(columns)})"
            )
        cells = cells[:, : len(columns)]
    if cells.shape[1] < len(columns):
        padding = np.full((len(cells), len(columns) - cells.shape[1]), "", dtype=object)
        cells = np.hstack([cells, padding])
    return cells


# Each retry widens the parse to a longer line; files with more line lengths than this are refused.
_MAX_WIDENINGS = 8


def _parse(path: Path, columns: tuple[str, ...]) -> np.ndarray:
    """pandas takes the number of fields from the first line and refuses a longer line after it,
    so a blank or short first line (a distractor written `Q1` instead of `Q1,`) or a later line
    with a trailing comma is parsed again with the width given (`names`). The width is never
    below the first line's: given fewer `names`, pandas would silently take the extra leading
    fields as an index."""
    import pandas as pd

    width = None
    for _ in range(_MAX_WIDENINGS):
        try:
            frame = pd.read_csv(
                path,
                header=None,
                names=None if width is None else list(range(width)),
                dtype=str,
                na_filter=False,
                skip_blank_lines=False,
                skipinitialspace=True,
            )
        except pd.errors.EmptyDataError:
            if width is None and path.read_bytes().strip():
                width = len(columns)  # a blank first line
                continue
            raise InputError(f"{path}: the file is empty") from None
        except pd.errors.ParserError as err:
            found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
            if found is None:
                raise InputError(f"{path}: malformed CSV: {' '.join(str(err).split())}") from None
            line, saw = found.group(2), int(found.group(3))
            width = max(saw, len(columns))
            continue
        except UnicodeDecodeError as err:
            raise _not_utf8(path, err) from None
        return strip(frame.to_numpy(dtype=object))
    raise InputError(f"{path}:{line}: {saw} fields, expected {len(columns)} ({','.join(columns)})")


def _not_utf8(path: Path, err: UnicodeDecodeError) -> InputError:
    """The error naming the line of the first byte that is not UTF-8 (pandas decodes in blocks,
    so its own error knows neither the line nor, always, the right reason)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exact:
        line = data.count(b"\n", 0, exact.start) + 1
        return InputError(
            f"{path}:{line}: not a UTF-8 text file (byte {data[exact.start]:#04x}: "
            f"{exact.reason}); save it as UTF-8"
        )
    return InputError(f"{path}: not a UTF-8 text file ({err.reason}); save it as UTF-8")


def strip(cells: np.ndarray) -> np.ndarray:
    """Every cell without its leading and trailing whitespace, the dtype kept."""
    if cells.size == 0:
        return cells
    return np.strings.strip(cells.astype(str)).astype(cells.dtype)


def is_header(row: np.ndarray, columns: tuple[str, ...]) -> bool:
    return [str(cell).lower() for cell in row] == list(columns)


def drop_blank_lines_and_header(
    path: Path,
    cells: np.ndarray,
    columns: tuple[str, ...],
    looks_like_data: Callable[[np.ndarray, np.ndarray], bool],
    hint: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop blank lines and the header (the column names, any case); return (cells, line
    numbers). A first line that is neither the header nor `looks_like_data(first, rest)` is an
    InputError naming it, with `hint` saying how to fix it."""
    lines = np.arange(1, len(cells) + 1)
    blank = (cells == "").all(axis=1)
    cells, lines = cells[~blank], lines[~blank]
    if len(cells) == 0:
        return cells, lines
    if is_header(cells[0], columns):
        return cells[1:], lines[1:]
    if not looks_like_data(cells[0], cells[1:]):
        found = ",".join(str(cell) for cell in cells[0])
        raise InputError(
            f"{path}:{lines[0]}: unknown columns {found!r}, expected {','.join(columns)} ({hint})"
        )
    return cells, lines


def id_shape(identifier: str) -> str:
    """The form of an id: each run of letters becomes `a`, each run of digits `0`
    (`Q00001` -> `a0`, `img_12` -> `a_0`)."""
    return re.sub(r"[^\W\d_]+", "a", re.sub(r"\d+", "0", identifier))


def looks_like_id_pair(first: np.ndarray, rest: np.ndarray) -> bool:
    """Whether a first (query, reference) line is data: its query or reference id has the form
    of an id in the lines below (`Q1,R1` over `Q2,R2`, not `qid,rid`); a file of one line
    must hold a digit (every id of DISC21 does)."""
    if len(rest) == 0:
        return any(character.isdigit() for character in "".join(map(str, first)))
    sample = rest[:SHAPE_SAMPLE]
    query_shapes = {id_shape(str(q)) for q in sample[:, 0]}
    reference_shapes = {id_shape(str(r)) for r in sample[:, 1] if r != ""}
    return id_shape(str(first[0])) in query_shapes or (
        first[1] != "" and id_shape(str(first[1])) in reference_shapes
    )


def check_ids(path: Path, ids: np.ndarray, lines: np.ndarray, what: str) -> np.ndarray:
    """`ids` as a str array; an empty id or a forbidden character is an InputError."""
    ids = ids.astype(str)
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InputError(f"{path}:{lines[empty[0]]}: empty {what}")
    row = first_forbidden(ids)
    if row is not None:
        raise InputError(f"{path}:{lines[row]}: {what} {why_forbidden(str(ids[row]))}")
    return ids


def first_forbidden(ids: np.ndarray) -> int | None:
    """The index of the first id holding a forbidden character, or None (on the code points, in
    one pass: a regex per id costs more than the whole CSV parse)."""
    ids = np.asarray(ids, dtype=str)
    if ids.size == 0 or ids.dtype.itemsize == 0:
        return None
    points = ids.view(np.uint32).reshape(len(ids), -1)
    bad = (
        (points == ord('"'))
        | ((points >= 1) & (points < 0x20))
        | ((points >= 0x7F) & (points <= 0x9F))
    )
    # numpy pads with NUL and drops trailing NULs; a NUL followed by a character is inside the id.
    bad[:, :-1] |= (points[:, :-1] == 0) & (points[:, 1:] != 0)
    rows = np.flatnonzero(bad.any(axis=1))
    return int(rows[0]) if len(rows) else None


def why_forbidden(identifier: str) -> str:
    character = FORBIDDEN_IN_IDS.search(identifier).group()
    if character == '"':
        return (
            f"{identifier!r} holds a double quote; quote whole fields, with nothing before the "
            "opening quote"
        )
    return f"{identifier!r} holds a control character ({character!r}); ids are printable text"
