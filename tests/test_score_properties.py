"""Property: whatever the files hold, `score` prints what a plain computation makes of the rows the
files mean, or exactly one `error:` line (exit 2). Never a traceback, never a silent zero.

Well-formed but odd files are drawn as rows first, then written with odd spelling (whitespace of
several kinds around any cell, quotes, BOM, CRLF or CR, header variants, blank lines, empty extra
fields, unicode ids, any finite float in several notations); what they must score is computed from
the rows by `plain_metrics`, a direct transcription of the definitions (docs/evaluation.md,
shared README section 1). Breaking them in a known way (a duplicate row, a NaN or inf score, a header
with other names, ids that never meet the ground truth's) must give that error. Arbitrary bytes and
damaged files must give an error or the plain metrics of what the readers made of them. Descriptor
files are drawn with odd layouts, dtypes and shapes and scored against brute-force distances.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.benchmarks.metrics import as_plain_lists
from harness.cli import main
from harness.errors import HarnessError
from harness.isc import read_ground_truth, read_predictions

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# The plain reference
# ---------------------------------------------------------------------------------------------


def plain_metrics(gt_pairs, predictions) -> dict:
    """µAP, recall@P90 and recall@rank1/10 by their definitions, one prediction at a time.

    `gt_pairs`: the true (query, reference) pairs; `predictions`: (query, reference, score)."""
    truth = set(gt_pairs)
    n_gt = len(truth)
    result = {"n_predictions": len(predictions), "n_gt": n_gt}
    if n_gt == 0:
        return {**result, "average_precision": None, "recall_at_p90": None}
    # Descending score; among equal scores negatives (False) before positives (True).
    ranked = sorted(predictions, key=lambda p: (-p[2], (p[0], p[1]) in truth))
    terms, recalls_at_p90, true_positives = [], [], 0
    for i, (query, reference, _) in enumerate(ranked, start=1):
        previous_recall = true_positives / n_gt
        true_positives += (query, reference) in truth
        recall, precision = true_positives / n_gt, true_positives / i
        terms.append((recall - previous_recall) * precision)
        if precision >= 0.9:
            recalls_at_p90.append(recall)
    # fsum: the exactly rounded sum, whatever the order of the terms (the harness's too).
    result["average_precision"] = math.fsum(terms)
    result["recall_at_p90"] = max(recalls_at_p90) if recalls_at_p90 else None
    for r in (1, 10):
        found = 0
        for query, reference in truth:
            true_scores = [s for q, ref, s in predictions if (q, ref) == (query, reference)]
            if true_scores:
                rank = sum(s >= true_scores[0] for q, _, s in predictions if q == query) - 1
                found += rank < r
        result[f"recall_at_rank{r}"] = found / n_gt
    return result


def ids_never_meet(gt_queries, gt_pairs, queries, references) -> bool:
    """What `score` must refuse: no scored query id is a ground-truth query, or (when the ground
    truth has pairs) no scored reference id is a ground-truth reference."""
    gt_references = {r for _, r in gt_pairs}
    return not set(queries) & set(gt_queries) or bool(
        gt_references and not set(references) & gt_references
    )


# ---------------------------------------------------------------------------------------------
# Running `score` as the command line does
# ---------------------------------------------------------------------------------------------


def run_score(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["score", *map(str, argv), "--json"])
    return code, out.getvalue(), err.getvalue()


def check_one_line_error(code: int, out: str, err: str, expected: str = "") -> str:
    """Exit 2, nothing on stdout, warnings at most and then exactly one `error:` line."""
    lines = err.splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert lines and lines[-1].startswith("error: "), err
    assert all(line.startswith("warning: ") for line in lines[:-1]), err
    assert expected in lines[-1], (expected, err)
    return lines[-1]


def check_scores(code: int, out: str, err: str, expected: dict) -> None:
    assert code == 0, err
    assert all(line.startswith("warning: ") for line in err.splitlines()), err
    result = json.loads(out)
    assert {key: result[key] for key in expected} == expected


# ---------------------------------------------------------------------------------------------
# Well-formed but odd CSV files
# ---------------------------------------------------------------------------------------------

# Prefixes give every id of a file one form (letters then digits), so the first line of a file
# without a header always looks like the lines below it.
QUERY_PREFIXES = ["Q", "q", "Qé", "クエリ", "query_", "Ω"]
REFERENCE_PREFIXES = ["R", "r", "Rø", "参照", "ref-", "Ж"]
WHITESPACE = st.sampled_from(["", "", "", " ", "  ", "\t", "\u00a0", "\u3000", " \t "])
FINITE = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 2.0]),  # ties
    st.floats(allow_nan=False, allow_infinity=False),
)
NON_FINITE = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity"])
SCORE_FORMATS = [repr, "{:.17g}".format, "{:+.17g}".format, "{:.17E}".format]


@st.composite
def cell(draw, value: str) -> str:
    left, right = draw(WHITESPACE), draw(WHITESPACE)
    if value and draw(st.booleans()):
        # Quoted: the whitespace inside the quotes, or spaces only before (CSV reads anything
        # else before a quote as part of the value).
        if draw(st.booleans()):
            return f'"{left}{value}{right}"'
        return f'{" " * len(left)}"{value}"{right}'
    return f"{left}{value}{right}"


@st.composite
def csv_text(draw, header: list[str], rows: list[list[str]]) -> str:
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = []
    style = draw(st.sampled_from(["none", "plain", "upper", "spaced", "quoted"]))
    if style != "none":
        names = {
            "plain": header,
            "upper": [name.upper() for name in header],
            "spaced": [f" {name} " for name in header],
            "quoted": [f'"{name}"' for name in header],
        }[style]
        lines.append(",".join(names))
    for row in rows:
        lines += [draw(WHITESPACE) for _ in range(draw(st.integers(0, 1)))]  # blank lines
        cells = [draw(cell(value)) for value in row]
        if row[-1] == "" and draw(st.booleans()):
            cells = cells[:-1]  # a distractor written `Q1` instead of `Q1,`
        elif draw(st.integers(0, 4)) == 0:
            cells.append(draw(WHITESPACE))  # an empty extra field
        lines.append(",".join(cells))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return bom + newline.join(lines) + draw(st.sampled_from([newline, ""]))


EXPECTED_ERRORS = {
    "gt duplicate": "duplicate ground-truth row",
    "duplicate": "duplicate prediction",
    "non-finite": "is not a finite number",
    "header": "unknown columns",
    "file names": "so every metric would be 0: ids differ in form",
    "swapped": "so every metric would be 0",
}


@st.composite
def scoring_case(draw):
    """Rows of a ground truth and of predictions, their odd files, and how they were broken."""
    width = draw(st.integers(0, 6))
    q_prefix = draw(st.sampled_from(QUERY_PREFIXES))
    r_prefix = draw(st.sampled_from(REFERENCE_PREFIXES))

    def query(n):
        return f"{q_prefix}{n:0{width}d}"

    def reference(n):
        return f"{r_prefix}{n:0{width}d}"

    pairs = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), unique=True, max_size=8))
    with_pair = {q for q, _ in pairs}
    free = sorted(set(range(10)) - with_pair)
    distractors = draw(st.lists(st.sampled_from(free), unique=True, max_size=4)) if free else []
    gt_rows = [[query(q), reference(r)] for q, r in pairs] + [[query(q), ""] for q in distractors]
    if not gt_rows:
        gt_rows = [[query(0), ""]]
    gt_rows = draw(st.permutations(gt_rows))

    # Mostly ids of the ground truth, some others (false positives, unknown references).
    gt_numbers = sorted(with_pair | set(distractors) | {r for _, r in pairs}) or [0]
    numbers = st.one_of(st.sampled_from(gt_numbers), st.integers(0, 12))
    predicted = draw(
        st.lists(
            st.tuples(st.tuples(numbers, numbers), FINITE),
            unique_by=lambda p: p[0],
            min_size=1,
            max_size=12,
        )
    )
    predictions = [(query(q), reference(r), score) for (q, r), score in predicted]
    prediction_rows = [[q, r, draw(st.sampled_from(SCORE_FORMATS))(s)] for q, r, s in predictions]

    broken = draw(st.sampled_from(["none"] * 8 + list(EXPECTED_ERRORS)))
    if broken == "gt duplicate":
        gt_rows = [*gt_rows, list(draw(st.sampled_from(gt_rows)))]
    elif broken == "duplicate":
        q, r, _ = draw(st.sampled_from(prediction_rows))
        prediction_rows.insert(draw(st.integers(0, len(prediction_rows))), [q, r, "0.25"])
    elif broken == "non-finite":
        prediction_rows[draw(st.integers(0, len(prediction_rows) - 1))][2] = draw(NON_FINITE)
    elif broken == "file names":
        prediction_rows = [[f"{q}.jpg", f"{r}.jpg", s] for q, r, s in prediction_rows]
    elif broken == "swapped":
        prediction_rows = [[r, q, s] for q, r, s in prediction_rows]
    gt = draw(csv_text(["query_id", "reference_id"], gt_rows))
    if broken == "header":
        gt = (
            draw(st.sampled_from(["qid,rid", "query,reference", "Query ID,Ref ID"]))
            + "\n"
            + gt.lstrip("\ufeff")
        )
    predictions_text = draw(csv_text(["query_id", "reference_id", "score"], prediction_rows))
    gt_pairs = [(q, r) for q, r in gt_rows if r]
    gt_queries = [q for q, _ in gt_rows]
    return gt, predictions_text, gt_queries, gt_pairs, predictions, broken


def write_files(directory: Path, gt: str | bytes, predictions: str | bytes) -> tuple[Path, Path]:
    paths = directory / "gt.csv", directory / "p.csv"
    for path, content in zip(paths, (gt, predictions), strict=True):
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return paths


@SETTINGS
@given(scoring_case())
def test_odd_but_well_formed_files_score_as_the_plain_reference(case):
    gt, predictions_text, gt_queries, gt_pairs, predictions, broken = case
    with tempfile.TemporaryDirectory() as directory:
        gt_path, predictions_path = write_files(Path(directory), gt, predictions_text)
        code, out, err = run_score("--gt", gt_path, "--predictions", predictions_path)
    if broken == "file names" and not {q for q, _, _ in predictions} & set(gt_queries):
        check_one_line_error(code, out, err, "so every metric would be 0")  # no cause to see
    elif broken != "none":
        check_one_line_error(code, out, err, EXPECTED_ERRORS[broken])
    elif ids_never_meet(
        gt_queries, gt_pairs, [p[0] for p in predictions], [p[1] for p in predictions]
    ):
        check_one_line_error(code, out, err, "so every metric would be 0")
    else:
        check_scores(code, out, err, plain_metrics(gt_pairs, predictions))


# ---------------------------------------------------------------------------------------------
# Arbitrary bytes, and valid files damaged byte by byte
# ---------------------------------------------------------------------------------------------


@st.composite
def damaged(draw, text: str) -> bytes:
    data = bytearray(text.encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        # Mostly the bytes that CSV gives a meaning to; now and then any byte.
        byte = draw(
            st.one_of(
                st.sampled_from(b',,\n\r" \t.-Q1e\x00'),
                st.integers(0, 255),
            )
        )
        if edit == "insert":
            data[at:at] = bytes([byte])
        elif at < len(data):
            data[at : at + 1] = b"" if edit == "delete" else bytes([byte])
    return bytes(data)


@st.composite
def arbitrary_files(draw):
    gt, predictions_text, *_ = draw(scoring_case())
    files = []
    for text in (gt, predictions_text):
        kind = draw(st.sampled_from(["bytes", "damaged", "damaged", "intact", "intact", "intact"]))
        if kind == "bytes":
            files.append(draw(st.binary(max_size=200)))
        elif kind == "damaged":
            files.append(draw(damaged(text)))
        else:
            files.append(text.encode("utf-8"))
    return files


def read_or_none(reader, path):
    try:
        return reader(path)
    except HarnessError:
        return None


@SETTINGS
@given(arbitrary_files())
def test_arbitrary_bytes_give_one_error_line_or_the_plain_scores_of_what_was_read(files):
    with tempfile.TemporaryDirectory() as directory:
        gt_path, predictions_path = write_files(Path(directory), *files)
        code, out, err = run_score("--gt", gt_path, "--predictions", predictions_path)
        gt = read_or_none(read_ground_truth, gt_path)
        predictions = read_or_none(read_predictions, predictions_path)
    if gt is None or predictions is None:
        check_one_line_error(code, out, err)
        return
    pairs, rows = as_plain_lists(gt, predictions)
    if ids_never_meet(
        gt.queries.tolist(), pairs, predictions.query.tolist(), predictions.reference.tolist()
    ):
        check_one_line_error(code, out, err, "so every metric would be 0")
    else:
        check_scores(code, out, err, plain_metrics(pairs, rows))


# ---------------------------------------------------------------------------------------------
# Descriptor files of odd layouts, dtypes and shapes
# ---------------------------------------------------------------------------------------------

GT_TEXT = "query_id,reference_id\nQ0,R0\nQ1,R1\nQ2,R0\nQ3,\n"
GT_PAIRS = [("Q0", "R0"), ("Q1", "R1"), ("Q2", "R0")]
GT_QUERIES = ["Q0", "Q1", "Q2", "Q3"]


# Each way of breaking a descriptor file, and what the error must say.
DESCRIPTOR_ERRORS = {
    "1-D": "must be a 2-D array",
    "3-D": "must be a 2-D array",
    "int32": "expected float32",
    "complex64": "expected float32",
    "integer ids": "ids must be strings",
    "ids group": "must be a dataset of strings",
    "not utf-8": "is not UTF-8",
    "missing id": "rows but",
    "extra id": "rows but",
    "no rows": "no descriptors (0 rows)",
    "dimension 0": "dimension 0",
    "nan": "holds NaN or inf",
    "inf": "holds NaN or inf",
    "beyond float32": "holds NaN or inf",
    "duplicate id": "duplicate id",
    "empty id": "has an empty id",
}


@st.composite
def descriptor_file(draw, split: str, prefix: str, dimension: int):
    """(how to write the file, how it was broken, what reading it must give: (ids, float32
    features), or None when broken)."""
    broken = draw(st.sampled_from(["none"] * 12 + list(DESCRIPTOR_ERRORS)))
    n = 0 if broken == "no rows" else draw(st.integers(2 if broken == "duplicate id" else 1, 5))
    d = 0 if broken == "dimension 0" else dimension
    dtype = broken if broken in ("int32", "complex64") else draw(st.sampled_from(FLOATS))
    values = np.array(
        draw(st.lists(st.integers(-3, 3), min_size=n * d, max_size=n * d)), dtype=np.float64
    ).reshape(n, d)
    if broken in ("nan", "inf", "beyond float32"):
        poison = {"nan": np.nan, "inf": -np.inf, "beyond float32": 1e300}[broken]
        values.flat[draw(st.integers(0, values.size - 1))] = poison
    numbers = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n, unique=True))
    ids = [f"{draw(WHITESPACE)}{prefix}{number}{draw(WHITESPACE)}" for number in numbers]
    if broken == "duplicate id":
        ids[-1] = f" {ids[0].strip()}"
    elif broken == "empty id":
        ids[draw(st.integers(0, n - 1))] = draw(WHITESPACE)
    elif broken == "missing id":
        ids = ids[:-1]
    elif broken == "extra id":
        ids.append(f"{prefix}9")
    id_kind = draw(st.sampled_from(["fixed bytes", "variable str", "variable bytes"]))
    extras = draw(st.booleans())

    def write(path: Path) -> None:
        with h5py.File(path, "w") as handle, np.errstate(invalid="ignore", over="ignore"):
            data = values.astype(dtype)
            handle[split] = {"1-D": data.ravel(), "3-D": data[..., None]}.get(broken, data)
            name = f"{split}_ids"
            encoded = [i.encode() for i in ids]
            if broken == "integer ids":
                handle[name] = np.arange(len(ids))
            elif broken == "ids group":
                handle.create_group(name)
            elif broken == "not utf-8":
                handle[name] = np.array([i + b"\xff" for i in encoded])
            elif id_kind == "fixed bytes":
                handle[name] = np.array(encoded, dtype="S") if ids else np.zeros(0, "S1")
            else:
                data = ids if id_kind == "variable str" else encoded
                handle.create_dataset(name, data=data, dtype=h5py.string_dtype())
            if extras:  # datasets and groups that are no descriptor split
                handle["notes"] = np.arange(3)
                handle.create_group("meta").create_dataset("version", data=1)

    expected = None
    if broken == "none":
        expected = ([i.strip() for i in ids], values.astype(dtype).astype(np.float32))
    return write, broken, expected


FLOATS = ["float32", "float16", "float64", ">f4", "<f8"]


@st.composite
def descriptor_files(draw):
    """Query and reference files, of one dimension but now and then."""
    dimension = draw(st.integers(1, 4))
    other = draw(st.sampled_from([dimension] * 7 + [dimension + 1]))
    return draw(descriptor_file("query", "Q", dimension)), draw(
        descriptor_file("reference", "R", other)
    )


def brute_force_predictions(queries, references):
    """Every (query, reference) pair with score -squared L2 distance: the ISC cap (10 per query)
    keeps them all when there are at most 10 references; exact for small integer features."""
    (query_ids, q), (reference_ids, r) = queries, references
    return [
        (qi, ri, -float(((q[a] - r[b]) ** 2).sum()))
        for a, qi in enumerate(query_ids)
        for b, ri in enumerate(reference_ids)
    ]


@SETTINGS
@given(descriptor_files())
def test_descriptor_files_score_as_brute_force_or_give_one_error_line(files):
    query_file, reference_file = files
    (write_queries, query_broken, queries) = query_file
    (write_references, reference_broken, references) = reference_file
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        (directory / "gt.csv").write_text(GT_TEXT)
        write_queries(directory / "q.h5")
        write_references(directory / "r.h5")
        code, out, err = run_score(
            "--gt",
            directory / "gt.csv",
            "--queries",
            directory / "q.h5",
            "--references",
            directory / "r.h5",
        )
    if query_broken != "none":
        check_one_line_error(code, out, err, DESCRIPTOR_ERRORS[query_broken])
    elif reference_broken != "none":
        check_one_line_error(code, out, err, DESCRIPTOR_ERRORS[reference_broken])
    elif queries[1].shape[1] != references[1].shape[1]:
        check_one_line_error(code, out, err, "descriptor dimensions differ")
    elif ids_never_meet(GT_QUERIES, GT_PAIRS, queries[0], references[0]):
        check_one_line_error(code, out, err, "so every metric would be 0")
    else:
        predictions = brute_force_predictions(queries, references)
        check_scores(code, out, err, plain_metrics(GT_PAIRS, predictions))
