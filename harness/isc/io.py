"""Reading and writing the ISC 2021 files: ground truth and predictions CSV, descriptor HDF5.

Every reader validates its input and raises `InputError` naming the file and the line (CSV) or the
dataset and row (HDF5); nothing is silently dropped. Every writer goes through harness.atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.atomic import atomic_path, atomic_write_text
from harness.errors import InputError
from harness.file_checks import require_input_file
from harness.isc import csv_cells, plain_csv
from harness.isc.types import Descriptors, GroundTruth, Predictions

GT_COLUMNS = ("query_id", "reference_id")
PREDICTION_COLUMNS = ("query_id", "reference_id", "score")
DESCRIPTOR_SPLITS = ("query", "reference", "training")
# The ISC 2021 descriptor track caps descriptors at 256 dimensions.
MAX_DESCRIPTOR_DIM = 256


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read `query_id,reference_id` (header optional); an empty reference_id marks a distractor.

    Ids are stripped of surrounding whitespace (harness.isc.csv_cells); a first line that is
    neither the header nor an id pair like the rows below it is an error."""
    path = require_input_file(path)
    gt = _read_ground_truth_plain(path)
    # Anything unusual is re-read cell by cell, which finds and reports the offending line.
    return gt if gt is not None else _read_ground_truth_checked(path)


def _read_ground_truth_plain(path: Path) -> GroundTruth | None:
    """A plain file (harness.isc.plain_csv) in a few numpy passes; None if the file is not plain
    or any check fails."""
    rows = plain_csv.read_rows(path, GT_COLUMNS)
    if rows is None or len(rows) == 0:
        return None
    queries = plain_csv.strings(rows, 0)
    references = None if queries is None else plain_csv.optional_strings(rows, 1)
    if references is None:
        return None
    sample = slice(1, csv_cells.SHAPE_SAMPLE + 1)
    if not rows.header and not csv_cells.looks_like_id_pair(
        np.array([queries[0], references[0]]),
        np.column_stack([queries[sample], references[sample]]),
    ):
        return None  # the careful reader names the line
    try:
        return _ground_truth(path, queries, references, rows.line)
    except InputError:
        return None


def _read_ground_truth_checked(path: Path) -> GroundTruth:
    """Cell-by-cell reading that locates every kind of bad input (slower)."""
    cells = csv_cells.read_cells(path, GT_COLUMNS)
    cells, lines = csv_cells.drop_blank_lines_and_header(
        path,
        cells,
        GT_COLUMNS,
        csv_cells.looks_like_id_pair,
        "the first line is not an id pair like the lines below it: name the columns "
        f"{','.join(GT_COLUMNS)}, or remove the line",
    )
    if len(cells) == 0:
        raise InputError(f"{path}: no ground-truth rows")
    return _ground_truth(path, cells[:, 0], cells[:, 1].astype(str), lines)


def _ground_truth(
    path: Path, queries: np.ndarray, references: np.ndarray, lines: np.ndarray
) -> GroundTruth:
    """The ground truth of stripped id columns (an empty reference: a distractor), checked: ids
    non-empty and printable, no repeated row, no query both matched and a distractor."""
    import pandas as pd

    from harness.isc.codes import first_repeated_pair, id_keys, lookup

    queries = csv_cells.check_ids(path, queries, lines, "query_id")
    has_match = references != ""
    csv_cells.check_ids(path, references[has_match], lines[has_match], "reference_id")

    # Integer keys for the ids (harness.isc.codes): no set or sort of strings unless there is an
    # error to report.
    query_keys, reference_keys = id_keys(queries, references)
    if first_repeated_pair(query_keys, reference_keys) is not None:
        pairs = np.char.add(np.char.add(queries, "\x00"), references)
        _, first, counts = np.unique(pairs, return_index=True, return_counts=True)
        row = first[np.flatnonzero(counts > 1)[0]]
        again = np.flatnonzero(pairs == pairs[row])[1]
        raise InputError(
            f"{path}:{lines[again]}: duplicate ground-truth row {queries[row]},{references[row]} "
            f"(first on line {lines[row]})"
        )
    distractors = pd.unique(query_keys[~has_match])
    conflicting = np.flatnonzero(has_match & lookup(query_keys, distractors)[1])
    if len(conflicting):
        i = conflicting[0]
        raise InputError(
            f"{path}:{lines[i]}: query {queries[i]} has a reference but is also listed as a "
            "distractor (empty reference_id)"
        )
    # Every query once, in the order of its first line.
    all_queries = queries[~pd.Index(query_keys).duplicated()]
    return GroundTruth(
        queries=all_queries, query=queries[has_match], reference=references[has_match]
    )


def write_ground_truth(path: str | os.PathLike, gt: GroundTruth) -> None:
    """Write the ground truth in the official layout (distractors with an empty reference_id)."""
    matched = set(gt.query.tolist())
    rows = [f"{q},{r}" for q, r in zip(gt.query.tolist(), gt.reference.tolist(), strict=True)]
    rows += [f"{q}," for q in gt.queries.tolist() if q not in matched]
    atomic_write_text(path, ",".join(GT_COLUMNS) + "\n" + "".join(row + "\n" for row in rows))


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read `query_id,reference_id,score` (header optional). Malformed rows, non-numeric or
    non-finite scores, empty ids, duplicate (query, reference) pairs and an empty file are errors
    (InputError naming the file and line). Cells are stripped of surrounding whitespace."""
    path = require_input_file(path)
    predictions = _read_predictions_plain(path)
    if predictions is None:
        try:
            predictions = _read_predictions_pandas(path)
        except (ValueError, OverflowError, UnicodeDecodeError):
            predictions = None
    # Anything unusual is re-read cell by cell, which finds and reports the offending line.
    return predictions if predictions is not None else _read_predictions_checked(path)


def _read_predictions_plain(path: Path) -> Predictions | None:
    """A plain file (harness.isc.plain_csv: ASCII, unquoted, three fields a line, decimal
    scores) in a few numpy passes; None if the file is not plain or any check fails."""
    rows = plain_csv.read_rows(path, PREDICTION_COLUMNS)
    if rows is None or len(rows) == 0:
        return None
    query = plain_csv.strings(rows, 0)
    reference = None if query is None else plain_csv.strings(rows, 1)
    score = None if reference is None else plain_csv.numbers(rows, 2)
    if score is None:
        return None
    predictions = Predictions(query=query, reference=reference, score=score)
    return None if find_duplicate_pair(predictions) is not None else predictions


def _read_predictions_pandas(path: Path) -> Predictions | None:
    """Any well-formed file in one native pass of pandas' reader (quoted fields, non-ASCII ids,
    unicode whitespace); None if any check fails (the caller then re-reads)."""
    import pandas as pd

    with open(path, encoding="utf-8-sig") as handle:
        first = next((line for line in handle if line.strip()), "")
    has_header = csv_cells.is_header(
        np.array([field.strip() for field in first.split(",")]), PREDICTION_COLUMNS
    )
    frame = pd.read_csv(
        path,
        header=0 if has_header else None,
        names=list(PREDICTION_COLUMNS),
        dtype=str,
        na_filter=False,
        skipinitialspace=True,
        engine="c",
    )
    # A line longer than the header makes pandas take its first fields as an index, shifting
    # every column: the checked reader then names the line.
    if len(frame) == 0 or not isinstance(frame.index, pd.RangeIndex):
        return None
    query = np.strings.strip(frame["query_id"].to_numpy(dtype=str))
    reference = np.strings.strip(frame["reference_id"].to_numpy(dtype=str))
    # Parsed as the plain path parses them (pandas' own parsers round some spellings otherwise).
    score = plain_csv.decimals(np.strings.strip(frame["score"].to_numpy(dtype=str)))
    if score is None or (query == "").any() or (reference == "").any():
        return None
    if csv_cells.first_forbidden(query) is not None:
        return None
    if csv_cells.first_forbidden(reference) is not None:
        return None
    predictions = Predictions(query=query, reference=reference, score=score)
    return None if find_duplicate_pair(predictions) is not None else predictions


def _is_number(text) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _as_float(text, parsed: float) -> float:
    try:
        return float(text)
    except ValueError:
        return parsed


def _read_predictions_checked(path: str | os.PathLike) -> Predictions:
    """Cell-by-cell reading that locates every kind of bad input (slower)."""
    import pandas as pd

    path = Path(path)
    cells = csv_cells.read_cells(path, PREDICTION_COLUMNS)
    # A first row is data if its score parses as a number ("nan" and "inf" do), or if it has no
    # score but ids like the rows below (a row missing its score, reported as such).
    cells, lines = csv_cells.drop_blank_lines_and_header(
        path,
        cells,
        PREDICTION_COLUMNS,
        lambda first, rest: (
            _is_number(first[2]) or (first[2] == "" and csv_cells.looks_like_id_pair(first, rest))
        ),
        "if this is a data row, a field is malformed",
    )
    if len(cells) == 0:
        raise InputError(f"{path}: no predictions (the file has no data rows)")
    queries = csv_cells.check_ids(path, cells[:, 0], lines, "query_id")
    references = csv_cells.check_ids(path, cells[:, 1], lines, "reference_id")
    raw_scores = cells[:, 2]
    scores = pd.to_numeric(pd.Series(raw_scores), errors="coerce").to_numpy(np.float64, copy=True)
    # pandas decides what is a number; the value is float()'s, as the fast paths read it (pandas
    # rounds some long spellings differently, and reads a column of integers as integers: -0 as 0).
    finite = np.flatnonzero(np.isfinite(scores))
    scores[finite] = [_as_float(raw_scores[i], scores[i]) for i in finite.tolist()]
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = bad[0]
        what = (
            f"no score (expected {','.join(PREDICTION_COLUMNS)})"
            if str(raw_scores[i]) == ""
            else f"score {raw_scores[i]!r} is not a finite number"
        )
        raise InputError(
            f"{path}:{lines[i]}: {what}" + (f" ({len(bad)} such rows)" if len(bad) > 1 else "")
        )
    predictions = Predictions(query=queries, reference=references, score=scores)
    duplicate = find_duplicate_pair(predictions)
    if duplicate is not None:
        first, again = duplicate
        raise InputError(
            f"{path}:{lines[again]}: duplicate prediction {queries[again]},{references[again]} "
            f"(first on line {lines[first]})"
        )
    return predictions


def write_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """Write `query_id,reference_id,score` with a header, scores in full precision."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "query_id": predictions.query,
            "reference_id": predictions.reference,
            "score": np.asarray(predictions.score, dtype=np.float64),
        }
    )
    with atomic_path(path) as tmp:
        frame.to_csv(
            tmp,
            index=False,
            float_format="%.9g" if predictions.score.dtype == np.float32 else "%.17g",
        )


def find_duplicate_pair(predictions: Predictions) -> tuple[int, int] | None:
    """Rows (first, repeat) of the first repeated (query, reference) pair, or None."""
    from harness.isc.codes import first_repeated_pair, id_keys

    query_keys, reference_keys = id_keys(predictions.query, predictions.reference)
    return first_repeated_pair(query_keys, reference_keys)


# --------------------------------------------------------------------------------------------
# HDF5 descriptors
# --------------------------------------------------------------------------------------------


def write_descriptors(path: str | os.PathLike, **splits: Descriptors) -> None:
    """Write descriptors in the official submission layout: a float32 dataset per split
    (`query`, `reference`, and our `training`) and `<split>_ids` as byte strings, sorted by id."""
    import h5py

    unknown = set(splits) - set(DESCRIPTOR_SPLITS)
    if unknown:
        raise ValueError(f"unknown descriptor split(s) {sorted(unknown)}; use {DESCRIPTOR_SPLITS}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            for split, descriptors in splits.items():
                order = np.argsort(descriptors.ids, kind="stable")
                ids = np.char.encode(descriptors.ids[order].astype(str), "utf-8")
                handle.create_dataset(split, data=descriptors.features[order].astype(np.float32))
                handle.create_dataset(f"{split}_ids", data=ids.astype(bytes))


def _open_descriptor_file(path: Path):
    import h5py

    require_input_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None


def descriptor_splits(path: str | os.PathLike) -> list[str]:
    """The descriptor splits (`query`, `reference`, `training`) present in an HDF5 file."""
    path = Path(path)
    with _open_descriptor_file(path) as handle:
        return [name for name in DESCRIPTOR_SPLITS if name in handle]


def read_descriptors(
    path: str | os.PathLike, split: str | None = None, *, max_dim: int = MAX_DESCRIPTOR_DIM
) -> Descriptors:
    """Read one split of a descriptor file; with `split=None` the file must hold exactly one.

    Ids are stripped of surrounding whitespace, as in the CSV files. Errors (InputError, naming
    the file and dataset): missing split, ids that are not (UTF-8) strings, empty ids or ids with
    forbidden characters, duplicate ids, ids/rows count mismatch, non-float or non-2-D features, no
    rows, dimension 0 or above `max_dim` (256, the ISC descriptor-track limit), NaN/inf values."""
    path = Path(path)
    with _open_descriptor_file(path) as handle:
        present = [name for name in DESCRIPTOR_SPLITS if name in handle]
        if split is None:
            if len(present) != 1:
                raise InputError(
                    f"{path}: expected exactly one descriptor split, found "
                    f"{present or 'none'} (datasets: {sorted(handle.keys())}); name the split"
                )
            split = present[0]
        features, raw_ids = _read_split_datasets(path, handle, split)
    where = f"{path}: dataset {split!r}"
    ids = _decode_ids(f"{path}: dataset {split}_ids", raw_ids)
    if len(ids) != len(features):
        raise InputError(f"{where}: {len(features)} rows but {len(ids)} ids in {split}_ids")
    if len(features) == 0:
        raise InputError(f"{where}: no descriptors (0 rows)")
    if features.shape[1] == 0:
        raise InputError(f"{where}: dimension 0 (the descriptors hold no values)")
    if features.shape[1] > max_dim:
        raise InputError(
            f"{where}: dimension {features.shape[1]} exceeds {max_dim} (the ISC descriptor-track "
            "limit; raise --max-dim to allow it)"
        )
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(
            f"{where}: row {row} (id {ids[row]}) holds NaN or inf "
            f"({int((~finite).sum())} such rows)"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{where}: duplicate id {str(unique[counts > 1][0])!r}")
    return Descriptors(ids=ids, features=features)


def _read_split_datasets(path: Path, handle, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The features (float32) and raw ids of one split, their layout checked."""
    import h5py

    if split not in handle:
        raise InputError(f"{path}: no dataset {split!r} (datasets: {sorted(handle.keys())})")
    if f"{split}_ids" not in handle:
        raise InputError(f"{path}: dataset {split!r} has no {split}_ids dataset")
    features_ds, ids_ds = handle[split], handle[f"{split}_ids"]
    if (
        not isinstance(features_ds, h5py.Dataset)
        or features_ds.shape is None
        or features_ds.ndim != 2
    ):
        raise InputError(f"{path}: dataset {split!r} must be a 2-D array (n, d)")
    if features_ds.dtype.kind != "f":
        raise InputError(
            f"{path}: dataset {split!r} has dtype {features_ds.dtype}, expected float32"
        )
    if not isinstance(ids_ds, h5py.Dataset) or ids_ds.shape is None:
        raise InputError(f"{path}: {split}_ids must be a dataset of strings")
    if h5py.check_string_dtype(ids_ds.dtype) is None and ids_ds.dtype.kind not in "SU":
        raise InputError(
            f"{path}: dataset {split}_ids has dtype {ids_ds.dtype}; ids must be strings"
        )
    if ids_ds.ndim != 1:
        raise InputError(f"{path}: dataset {split}_ids must be 1-D")
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
            features = np.asarray(features_ds[()], dtype=np.float32)
        raw_ids = ids_ds[()]
    except OSError as err:
        raise InputError(
            f"{path}: cannot read dataset {split!r} ({err}); the file is damaged"
        ) from None
    return features, raw_ids


def _decode_ids(where: str, raw_ids: np.ndarray) -> np.ndarray:
    """Ids as a stripped str array; InputError for bytes that are not UTF-8, an empty id or a
    forbidden character (harness.isc.csv_cells)."""
    try:
        if raw_ids.dtype.kind == "S":
            ids = np.char.decode(raw_ids, "utf-8")
        elif raw_ids.dtype.kind == "O":  # variable-length strings
            ids = np.asarray(
                [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in raw_ids], dtype=str
            )
        else:
            ids = raw_ids.astype(str)
    except UnicodeDecodeError:
        row, raw = next((row, raw) for row, raw in enumerate(raw_ids.tolist()) if not _is_utf8(raw))
        raise InputError(
            f"{where}: the id of row {row} ({raw!r}) is not UTF-8; write ids as UTF-8 text"
        ) from None
    ids = np.strings.strip(ids.astype(str)) if len(ids) else np.zeros(0, dtype="<U1")
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InputError(f"{where}: row {int(empty[0])} has an empty id")
    row = csv_cells.first_forbidden(ids)
    if row is not None:
        raise InputError(f"{where}: row {row}: {csv_cells.why_forbidden(str(ids[row]))}")
    return ids


def _is_utf8(raw) -> bool:
    try:
        raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        return False
    return True
