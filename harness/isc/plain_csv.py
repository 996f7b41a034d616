"""The fast path for plain ISC CSV files: a few numpy passes over the file's bytes.

A *plain* file is printable ASCII without double quotes (plus tabs, LF or CRLF line ends, and a
UTF-8 BOM at the start), every non-blank line holds exactly the expected number of fields, and
numbers are plain decimals (`-0.25`, `1e-5`, `+.5E3`). That is what the harness writes and what
submissions nearly always are. Anything else (quotes, non-ASCII ids, a lone CR, a short or long
line, a field to be parsed otherwise) makes these functions return None, and the caller reads the
file with the careful cell-by-cell reader (harness.isc.csv_cells), which accepts every spelling and
names the line of every error. On the files both accept, both give the same values: cells without
surrounding spaces or tabs (as `str.strip` has it), blank lines skipped, the header (the column
names, any case) dropped, scores parsed by the correctly rounded parser of `float()`.

Nothing here loops in Python over rows: fields are found from the positions of commas and newlines,
gathered into fixed-width byte arrays, and decoded in one numpy cast per column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_BOM = b"\xef\xbb\xbf"
# The bytes a plain file may hold; any other byte (a quote, a control character, non-ASCII)
# leaves the file to the careful reader.
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b'"', b"") + b"\t\n\r"
_COMMA, _NEWLINE, _TAB = ord(","), ord("\n"), ord("\t")
# Spaces and tabs: the only whitespace a plain file holds, stripped around every cell.
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[ord(" "), _TAB]] = True
# The bytes of a plain decimal, and 0 (the padding of a fixed-width field).
_DECIMAL = b"\0" + b"0123456789.eE+-"
# A mask of the low n bytes of a little-endian 64-bit word, n = 0..8.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype="<u8")


@dataclass
class PlainRows:
    """The data rows of a plain file: where each cell lies in `text`, without surrounding spaces
    or tabs, and each row's line number in the file (1-based, blank lines and header counted)."""

    text: np.ndarray  # uint8: the file's bytes, BOM removed, CRLF as LF, ending with LF
    start: np.ndarray  # (rows, columns) int64: the first byte of each cell
    end: np.ndarray  # (rows, columns) int64: one past its last byte (start == end: empty)
    line: np.ndarray  # (rows,) int64
    header: bool  # whether the file's first non-blank line was the header (dropped)

    def __len__(self) -> int:
        return len(self.line)


def read_rows(path: Path, columns: tuple[str, ...]) -> PlainRows | None:
    """The data rows of `path` if it is a plain file with `len(columns)` fields on each
    non-blank line, else None. A first non-blank line that is the header (the column names in
    any case) is dropped; any other first line is returned as data."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None  # the careful reader meets it again and says what it is
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if data.translate(None, _PLAIN_BYTES):  # some byte outside the plain set
        return None
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None  # a lone CR, which CSV readers take as a line end too
        data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    text = np.frombuffer(data, dtype=np.uint8)
    bounds = _cell_bounds(text, len(columns))
    if bounds is None:
        return None
    start, end, line = bounds
    if len(line) == 0:
        return None  # blank lines only: the careful reader says the file is empty
    if b" " in data or b"\t" in data:
        start, end = _strip(text, start.ravel(), end.ravel())
        start, end = start.reshape(-1, len(columns)), end.reshape(-1, len(columns))
    rows = PlainRows(text=text, start=start, end=end, line=line, header=False)
    first = [_cell(rows, 0, k).lower() for k in range(len(columns))]
    if first == list(columns):
        rows = PlainRows(text=text, start=start[1:], end=end[1:], line=line[1:], header=True)
    return rows


def _cell_bounds(
    text: np.ndarray, n_columns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(start, end, line) of the cells of the lines holding `n_columns` fields, before stripping;
    None if another line is not blank (spaces and tabs only)."""
    separators = np.flatnonzero((text == _COMMA) | (text == _NEWLINE))
    kinds = text[separators]
    pattern = np.array([_COMMA] * (n_columns - 1) + [_NEWLINE], dtype=np.uint8)
    if len(separators) % n_columns == 0 and (kinds.reshape(-1, n_columns) == pattern).all():
        # No blank line (the usual file): each line's separators are its cells' ends.
        end = separators.reshape(-1, n_columns)
        start = np.empty_like(end)
        start[:, 1:] = end[:, :-1] + 1
        start[1:, 0] = end[:-1, -1] + 1
        start[:1, 0] = 0
        return start, end, np.arange(1, len(end) + 1)
    line_ends = np.flatnonzero(kinds == _NEWLINE)  # index in `separators`
    fields = np.diff(line_ends, prepend=-1)
    regular = fields == n_columns
    # Lines without the expected field count may only be blank.
    odd = np.flatnonzero(~regular)
    if (fields[odd] != 1).any():
        return None
    start = np.where(odd > 0, separators[line_ends[odd - 1]] + 1, 0)
    start, end = _strip(text, start, separators[line_ends[odd]])
    if (start != end).any():
        return None
    line = np.flatnonzero(regular) + 1
    # Each row's separators: the one before it (the previous line end, or -1), then one per field.
    last = line_ends[line - 1]
    bounds = np.empty((len(line), n_columns + 1), dtype=np.int64)
    for k in range(n_columns + 1):
        bounds[:, k] = separators[np.maximum(last - n_columns + k, 0)]
    bounds[last - n_columns < 0, 0] = -1  # the file's first line: no separator before it
    return bounds[:, :-1] + 1, bounds[:, 1:], line


def _strip(text: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) moved past leading and before trailing spaces and tabs."""
    start, end = start.copy(), end.copy()
    active = np.flatnonzero((start < end) & _SPACE[text[start]])
    while len(active):
        start[active] += 1
        active = active[(start[active] < end[active]) & _SPACE[text[start[active]]]]
    active = np.flatnonzero((start < end) & _SPACE[text[end - 1]])
    while len(active):
        end[active] -= 1
        active = active[(start[active] < end[active]) & _SPACE[text[end[active] - 1]]]
    return start, end


def _cell(rows: PlainRows, row: int, column: int) -> str:
    return bytes(rows.text[rows.start[row, column] : rows.end[row, column]]).decode("ascii")


def _fixed_width(rows: PlainRows, column: int) -> np.ndarray:
    """The cells of a column as a (rows, width) uint8 array, zero-padded on the right; width is
    the longest cell's length rounded up to 8 bytes (at least 8)."""
    start = np.ascontiguousarray(rows.start[:, column])
    end = np.ascontiguousarray(rows.end[:, column])
    length = end - start
    words = max(-(-int(length.max()) // 8), 1) if len(length) else 1
    out = np.zeros((len(start), words), dtype="<u8")
    text = rows.text
    # Rows are in file order, so the cells whose last word lies inside the text are a prefix;
    # the few at the very end are copied byte by byte.
    fits = int(np.searchsorted(start, len(text) - 8 * words, side="right"))
    if fits:
        # The 8 bytes from each offset of the text as one little-endian integer (unaligned).
        eights = np.ndarray((len(text) - 7,), dtype="<u8", buffer=text, strides=(1,))
        for word in range(words):
            chunk = eights[start[:fits] + 8 * word]
            left = length[:fits] - 8 * word  # bytes of the cell from this word on
            chunk &= _LOW_BYTES[np.maximum(np.minimum(left, 8, out=left), 0, out=left)]
            out[:fits, word] = chunk
    cells = out.view(np.uint8)
    for row in range(fits, len(start)):
        cells[row, : length[row]] = text[start[row] : end[row]]
    return cells


def strings(rows: PlainRows, column: int) -> np.ndarray | None:
    """A column's cells as a str array, or None if one is empty or holds a tab (a control
    character, which the careful reader reports)."""
    if (rows.end[:, column] == rows.start[:, column]).any():
        return None
    return optional_strings(rows, column)


def optional_strings(rows: PlainRows, column: int) -> np.ndarray | None:
    """As `strings`, but an empty cell is allowed (the empty string)."""
    cells = _fixed_width(rows, column)
    if (cells == _TAB).any():
        return None
    # As wide as the longest cell (a str array's width is its longest string's, as numpy makes it).
    width = max(int((rows.end[:, column] - rows.start[:, column]).max(initial=0)), 1)
    return np.ascontiguousarray(cells[:, :width], dtype=np.uint32).view(f"U{width}").ravel()


def numbers(rows: PlainRows, column: int) -> np.ndarray | None:
    """A column's cells as float64, as `decimals` reads them."""
    cells = _fixed_width(rows, column)
    return decimals(cells.view(f"S{cells.shape[1]}").reshape(len(cells)))


def decimals(texts: np.ndarray) -> np.ndarray | None:
    """Stripped texts (a str or bytes array) as float64, exactly as `float()` reads them
    (correctly rounded), or None unless every one is a plain decimal number (digits, a point, an
    exponent, signs: no `nan`, `inf`, underscores, inner spaces or non-ASCII digits) of finite
    value."""
    if texts.dtype.kind == "U":
        try:
            texts = texts.astype(f"S{max(texts.dtype.itemsize // 4, 1)}")
        except UnicodeEncodeError:
            return None
    if len(texts) == 0:
        return np.zeros(0, dtype=np.float64)
    if (texts == b"").any():
        return None
    if np.ascontiguousarray(texts).tobytes().translate(None, _DECIMAL):
        return None
    try:
        # numpy parses bytes with the correctly rounded parser of float().
        values = texts.astype(np.float64)
    except ValueError:  # `1e`, `.`, `1.2.3`, `+-1`, ...
        return None
    return values if np.isfinite(values).all() else None
