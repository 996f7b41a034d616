"""The fast path for plain CSV files (harness/isc/plain_csv.py) against the careful reader.

Plain files (ASCII, unquoted, LF or CRLF, any header spelling, spaces and tabs around cells, blank
lines, decimal scores in any notation) must be read by the fast path, to exactly what the careful
cell-by-cell reader makes of them: the same ids, the same scores bit for bit. Any other file, well
formed or not, must give what the careful reader gives: the same values, or the same error naming
the same line (the fast path declines and the careful reader reads it again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.isc import plain_csv
from harness.isc.io import (
    GT_COLUMNS,
    PREDICTION_COLUMNS,
    _read_ground_truth_checked,
    _read_ground_truth_plain,
    _read_predictions_checked,
    _read_predictions_pandas,
    _read_predictions_plain,
    read_ground_truth,
    read_predictions,
    write_predictions,
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,  # CI sees the same examples every run; set it False locally to explore
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every id of a file has one form (a prefix, then digits), so a first line without a header
# always looks like the lines below it. Some prefixes make ids longer than 8 or 16 bytes (the
# fast path gathers cells 8 bytes at a time), one holds an inner space (part of the id).
PREFIXES = ["Q", "r", "img_", "query-image-", "a b", "x.y/z:", "very_long_reference_name_"]
PADDING = st.sampled_from(["", "", "", " ", "  ", "\t", " \t "])
BLANK = st.sampled_from(["", " ", "\t", "  \t"])
FINITE = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 2.0]),
    st.floats(allow_nan=False, allow_infinity=False),
)
FORMATS = [
    repr,
    "{:.17g}".format,
    "{:+.17g}".format,
    "{:.17E}".format,
    "{:.3f}".format,
    "{:.9g}".format,
    "{:e}".format,
]
# Decimal spellings that float() reads and repr() never writes: long mantissas (beyond 17 digits),
# a leading dot or a trailing one, a plus sign, exponents with leading zeros.
DECIMAL = st.from_regex(
    r"[+-]?([0-9]{1,25}(\.[0-9]{0,25})?|\.[0-9]{1,25})([eE][+-]?[0-9]{1,2})?", fullmatch=True
)


def score_text():
    return st.one_of(st.tuples(st.sampled_from(FORMATS), FINITE).map(lambda f: f[0](f[1])), DECIMAL)


@st.composite
def plain_lines(
    draw, columns: tuple[str, ...], rows: list[list[str]]
) -> tuple[list[str], list[int]]:
    """The lines of a plain file holding `rows`, and each row's line number (1-based)."""
    lines = [draw(BLANK) for _ in range(draw(st.integers(0, 2)))]
    style = draw(st.sampled_from(["none", "plain", "upper", "spaced"]))
    if style != "none":
        names = {
            "plain": list(columns),
            "upper": [name.upper() for name in columns],
            "spaced": [f"{draw(PADDING)}{name}{draw(PADDING)}" for name in columns],
        }[style]
        lines.append(",".join(names))
    numbers = []
    for row in rows:
        lines += [draw(BLANK) for _ in range(draw(st.integers(0, 1)))]
        lines.append(",".join(f"{draw(PADDING)}{cell}{draw(PADDING)}" for cell in row))
        numbers.append(len(lines))
    lines += [draw(BLANK) for _ in range(draw(st.integers(0, 2)))]
    return lines, numbers


def join(draw, lines: list[str]) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + newline.join(lines) + draw(st.sampled_from([newline, ""]))).encode("utf-8")


@st.composite
def prediction_rows(draw) -> list[list[str]]:
    q_prefix, r_prefix = draw(st.sampled_from(PREFIXES)), draw(st.sampled_from(PREFIXES))
    width = draw(st.integers(0, 6))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=25, unique=True
        )
    )
    return [
        [f"{q_prefix}{q:0{width}d}", f"{r_prefix}{r:0{width}d}", draw(score_text())]
        for q, r in pairs
    ]


@st.composite
def ground_truth_rows(draw) -> list[list[str]]:
    q_prefix, r_prefix = draw(st.sampled_from(PREFIXES)), draw(st.sampled_from(PREFIXES))
    width = draw(st.integers(0, 6))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=25, unique=True
        )
    )
    matched = {q for q, _ in pairs}
    distractors = draw(st.lists(st.integers(31, 60), unique=True, max_size=10))
    rows = [[f"{q_prefix}{q:0{width}d}", f"{r_prefix}{r:0{width}d}"] for q, r in pairs]
    rows += [[f"{q_prefix}{q:0{width}d}", ""] for q in distractors if q not in matched]
    return draw(st.permutations(rows))


def outcome(reader, path: Path):
    """What a reader makes of a file: its values (scores bit for bit), or its error message."""
    try:
        result = reader(path)
    except InputError as err:
        return ("error", str(err))
    if result is None:
        return None
    if hasattr(result, "score"):
        return ("predictions", result.query.tolist(), result.reference.tolist(), bits(result.score))
    return (
        "ground truth",
        result.queries.tolist(),
        result.query.tolist(),
        result.reference.tolist(),
    )


def bits(scores) -> list[int]:
    return np.asarray(scores, dtype=np.float64).view(np.int64).tolist()


def written(data: bytes, name: str):
    directory = tempfile.TemporaryDirectory()
    path = Path(directory.name) / name
    path.write_bytes(data)
    return directory, path


# ---------------------------------------------------------------------------------------------
# Plain files: read by the fast path, to what the careful reader reads
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_plain_prediction_files_are_read_fast_and_exactly_as_the_careful_reader(data):
    rows = data.draw(prediction_rows())
    lines, numbers = data.draw(plain_lines(PREDICTION_COLUMNS, rows))
    directory, path = written(join(data.draw, lines), "p.csv")
    with directory:
        fast = _read_predictions_plain(path)
        assert fast is not None, path.read_bytes()
        assert plain_csv.read_rows(path, PREDICTION_COLUMNS).line.tolist() == numbers
        expected = outcome(_read_predictions_checked, path)
        assert expected[0] == "predictions"
        assert outcome(_read_predictions_plain, path) == expected
        assert outcome(read_predictions, path) == expected
        # pandas' one pass (the fast path before this one), where it reads the file
        before = _read_predictions_pandas(path)
    # and these are the rows that were written, the scores bit for bit as float() reads them
    assert expected[1] == [q for q, _, _ in rows] and expected[2] == [r for _, r, _ in rows]
    assert bits(fast.score) == bits([float(s) for _, _, s in rows])
    if before is not None:
        assert bits(before.score) == bits(fast.score)


@SETTINGS
@given(st.data())
def test_plain_ground_truth_files_are_read_fast_and_exactly_as_the_careful_reader(data):
    rows = data.draw(ground_truth_rows())
    lines, _ = data.draw(plain_lines(GT_COLUMNS, rows))
    directory, path = written(join(data.draw, lines), "gt.csv")
    with directory:
        assert _read_ground_truth_plain(path) is not None, path.read_bytes()
        expected = outcome(_read_ground_truth_checked, path)
        assert expected[0] == "ground truth"
        assert outcome(_read_ground_truth_plain, path) == expected
        assert outcome(read_ground_truth, path) == expected


def test_the_harness_own_predictions_files_take_the_fast_path(tmp_path):
    from harness.benchmarks.metrics import synthetic_case
    from harness.isc import write_ground_truth

    gt, predictions = synthetic_case(20_000, seed=1)
    write_predictions(tmp_path / "p.csv", predictions)
    write_ground_truth(tmp_path / "gt.csv", gt)
    fast = _read_predictions_plain(tmp_path / "p.csv")
    assert fast is not None and _read_ground_truth_plain(tmp_path / "gt.csv") is not None
    assert fast.query.tolist() == predictions.query.tolist()
    assert fast.reference.tolist() == predictions.reference.tolist()
    np.testing.assert_array_equal(fast.score.view(np.int64), predictions.score.view(np.int64))


@pytest.mark.parametrize(
    "text, queries",
    [
        ("Q,R,1", ["Q"]),  # shorter than one 8-byte word, no final newline
        ("Q1,R,1\n", ["Q1"]),
        ("12345678,R,1\n123456789,R,2", ["12345678", "123456789"]),
        ("Q,R,1\n" + "q" * 16 + ",R,2\n" + "q" * 17 + ",R,3", ["Q", "q" * 16, "q" * 17]),
    ],
)
def test_cells_at_the_end_of_the_file_are_whole(tmp_path, text, queries):
    path = tmp_path / "p.csv"
    path.write_text(text)
    fast = _read_predictions_plain(path)
    assert fast is not None and fast.query.tolist() == queries
    assert fast.reference.tolist() == ["R"] * len(queries)
    assert fast.score.tolist() == [float(i + 1) for i in range(len(queries))]


# ---------------------------------------------------------------------------------------------
# Other files: the fast path declines, and the result or the error is the careful reader's
# ---------------------------------------------------------------------------------------------

# Each edit replaces one data row: (the row's cells, or None for a row the edit writes itself).
BREAKAGES = {
    "a fourth field": (lambda q, r, s: f"{q},{r},{s},9", "4 fields, expected 3"),
    "no score": (lambda q, r, s: f"{q},{r}", "no score"),
    "empty query": (lambda q, r, s: f",{r},{s}", "empty query_id"),
    "empty reference": (lambda q, r, s: f"{q}, ,{s}", "empty reference_id"),
    "text score": (lambda q, r, s: f"{q},{r},high", "score 'high' is not a finite number"),
    "nan": (lambda q, r, s: f"{q},{r},nan", "score 'nan' is not a finite number"),
    "inf": (lambda q, r, s: f"{q},{r},-inf", "score '-inf' is not a finite number"),
    "overflow": (lambda q, r, s: f"{q},{r},1e999", "score '1e999' is not a finite number"),
    "underscore": (lambda q, r, s: f"{q},{r},1_000", "score '1_000' is not a finite number"),
    "tab inside an id": (lambda q, r, s: f"{q}\tx,{r},{s}", "holds a control character"),
    "control character": (lambda q, r, s: f"{q},{r}\x01,{s}", "holds a control character"),
    "quote inside an id": (lambda q, r, s: f'{q},x"{r},{s}', "holds a double quote"),
}
# Well-formed files that are not plain: the careful reader (or pandas' pass) reads them.
NOT_PLAIN = {
    "quoted cells": lambda q, r, s: f'"{q}","{r}",{s}',
    "non-ASCII id": lambda q, r, s: f"{q}é,{r},{s}",
    "unicode space": lambda q, r, s: f"\u3000{q},{r}\u00a0,{s}",
    "empty fields beyond": lambda q, r, s: f"{q},{r},{s},",
}


@SETTINGS
@given(st.data(), st.sampled_from(sorted(BREAKAGES)))
def test_malformed_lines_fall_back_to_the_careful_reader_and_its_line_numbers(data, kind):
    rows = data.draw(prediction_rows())
    lines, numbers = data.draw(plain_lines(PREDICTION_COLUMNS, rows))
    at = data.draw(st.integers(0, len(rows) - 1))
    edit, message = BREAKAGES[kind]
    lines[numbers[at] - 1] = edit(*rows[at])
    directory, path = written(join(data.draw, lines), "p.csv")
    with directory:
        assert _read_predictions_plain(path) is None
        expected = outcome(_read_predictions_checked, path)
        got = outcome(read_predictions, path)
    assert got == expected
    if kind == "text score" and not any(line.strip() for line in lines[: numbers[at] - 1]):
        message = "unknown columns"  # a first line with a word for a score may be a header
    assert got[0] == "error" and f"p.csv:{numbers[at]}: " in got[1] and message in got[1], got


@SETTINGS
@given(st.data())
def test_a_duplicate_pair_falls_back_and_names_both_lines(data):
    rows = data.draw(prediction_rows())
    lines, numbers = data.draw(plain_lines(PREDICTION_COLUMNS, rows))
    first = data.draw(st.integers(0, len(rows) - 1))
    q, r, _ = rows[first]
    lines.append(f"{q},{r},0.5")
    directory, path = written(join(data.draw, lines), "p.csv")
    with directory:
        assert _read_predictions_plain(path) is None
        got = outcome(read_predictions, path)
        assert got == outcome(_read_predictions_checked, path)
    assert got[1].endswith(
        f"p.csv:{len(lines)}: duplicate prediction {q},{r} (first on line {numbers[first]})"
    )


@SETTINGS
@given(st.data(), st.sampled_from(sorted(NOT_PLAIN)), st.booleans())
def test_well_formed_files_that_are_not_plain_read_as_the_careful_reader(data, kind, lone_cr):
    rows = data.draw(prediction_rows())
    lines, numbers = data.draw(plain_lines(PREDICTION_COLUMNS, rows))
    at = data.draw(st.integers(0, len(rows) - 1))
    lines[numbers[at] - 1] = NOT_PLAIN[kind](*rows[at])
    text = "\r".join(lines) if lone_cr else "\n".join(lines)
    directory, path = written(text.encode("utf-8"), "p.csv")
    with directory:
        assert _read_predictions_plain(path) is None
        expected = outcome(_read_predictions_checked, path)
        assert expected[0] == "predictions"
        assert outcome(read_predictions, path) == expected


@SETTINGS
@given(st.data())
def test_a_lone_cr_inside_a_line_is_left_to_the_careful_reader(data):
    # CSV readers end a line at a lone CR: the plain path must not read it as part of a cell.
    rows = data.draw(prediction_rows())
    lines, numbers = data.draw(plain_lines(PREDICTION_COLUMNS, rows))
    line = lines[numbers[data.draw(st.integers(0, len(rows) - 1))] - 1]
    # Before the line's last character: a CR at its end would make a CRLF line end, which is plain.
    cut = data.draw(st.integers(0, len(line) - 1))
    lines[lines.index(line)] = line[:cut] + "\r" + line[cut:]
    directory, path = written(join(data.draw, lines), "p.csv")
    with directory:
        assert _read_predictions_plain(path) is None
        assert outcome(read_predictions, path) == outcome(_read_predictions_checked, path)


GT_BREAKAGES = {
    "a duplicate row": "duplicate ground-truth row",
    "a matched distractor": "is also listed as a distractor",
    "a third field": "3 fields, expected 2",
    "a tab inside an id": "holds a control character",
}


@SETTINGS
@given(st.data(), st.sampled_from(sorted(GT_BREAKAGES)))
def test_malformed_ground_truth_falls_back_to_the_careful_reader(data, kind):
    rows = [row for row in data.draw(ground_truth_rows())]
    matched = [row for row in rows if row[1]]
    lines, numbers = data.draw(plain_lines(GT_COLUMNS, rows))
    if kind == "a duplicate row":
        lines.append(",".join(matched[0]))
    elif kind == "a matched distractor":
        lines.append(f"{matched[0][0]},")
    elif kind == "a third field":
        lines.append(f"{matched[0][0]},{matched[0][1]},x")
    else:
        lines.append(f"{matched[0][0]}\t2,{matched[0][1]}")
    directory, path = written(join(data.draw, lines), "gt.csv")
    with directory:
        assert _read_ground_truth_plain(path) is None
        got = outcome(read_ground_truth, path)
        assert got == outcome(_read_ground_truth_checked, path)
    assert got[0] == "error" and GT_BREAKAGES[kind] in got[1], got
    # The line named is the appended one, or (a matched distractor) the matched row's.
    line = numbers[rows.index(matched[0])] if kind == "a matched distractor" else len(lines)
    assert f"gt.csv:{line}: " in got[1], got


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ("\n  \n\t\n", "the file is empty"),
        ("query_id,reference_id,score\n", "no predictions"),
        ("qid,rid,similarity\nQ1,R1,0.5\n", "p.csv:1: unknown columns"),
    ],
)
def test_files_without_rows_fall_back_to_the_careful_message(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    assert _read_predictions_plain(path) is None
    with pytest.raises(InputError, match=message):
        read_predictions(path)


def test_numbers_are_parsed_as_float_parses_them(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000)
    texts = [f(v) for v in values.tolist() for f in (repr, "{:.17g}".format, "{:.25e}".format)]
    path = tmp_path / "p.csv"
    path.write_text("".join(f"Q{i},R,{t}\n" for i, t in enumerate(texts)))
    rows = plain_csv.read_rows(path, PREDICTION_COLUMNS)
    parsed = plain_csv.numbers(rows, 2)
    expected = np.array([float(t) for t in texts])
    np.testing.assert_array_equal(parsed.view(np.int64), expected.view(np.int64))
