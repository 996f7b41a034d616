"""Reading and writing the ISC 2021 files: ground truth and predictions CSV, descriptor HDF5.

Every reader validates its input and raises `InputError` naming the file and the line (CSV) or the
dataset and row (HDF5); nothing is silently dropped. Every writer goes through harness.atomic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from harness.atomic import atomic_path, atomic_write_text
from harness.errors import InputError
from harness.isc.types import Descriptors, GroundTruth, Predictions

GT_COLUMNS = ("query_id", "reference_id")
PREDICTION_COLUMNS = ("query_id", "reference_id", "score")
DESCRIPTOR_SPLITS = ("query", "reference", "training")
# The ISC 2021 descriptor track caps descriptors at 256 dimensions.
MAX_DESCRIPTOR_DIM = 256


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _read_csv_cells(path: Path, columns: tuple[str, ...]) -> np.ndarray:
    """All cells of a CSV as a (lines, len(columns)) object array of str, row i = line i + 1
    (blank lines included, so line numbers stay right); missing trailing fields are ""."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        frame = pd.read_csv(
            path,
            header=None,
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if found:
            line, saw = found.group(2), found.group(3)
            raise InputError(
                f"{path}:{line}: {saw} fields, expected {len(columns)} ({','.join(columns)})"
            ) from None
        raise InputError(f"{path}: malformed CSV: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a UTF-8 text file ({err.reason})") from None

    cells = frame.to_numpy(dtype=object)
    if cells.shape[1] > len(columns):
        extra = cells[:, len(columns) :]
        bad = np.flatnonzero((extra != "").any(axis=1))
        line = int(bad[0]) + 1 if len(bad) else 1
        raise InputError(
            f"{path}:{line}: {cells.shape[1]} fields, expected {len(columns)} ({','.join(columns)})"
        )
    if cells.shape[1] < len(columns):
        padding = np.full((len(cells), len(columns) - cells.shape[1]), "", dtype=object)
        cells = np.hstack([cells, padding])
    return cells


def _split_header(
    path: Path, cells: np.ndarray, columns: tuple[str, ...], looks_like_header
) -> tuple[np.ndarray, np.ndarray]:
    """Drop an optional header row and blank lines; return (cells, line numbers)."""
    lines = np.arange(1, len(cells) + 1)
    blank = (cells == "").all(axis=1)
    cells, lines = cells[~blank], lines[~blank]
    if len(cells) and looks_like_header(cells[0]):
        header = tuple(str(c).strip() for c in cells[0])
        if header != columns:
            raise InputError(
                f"{path}:{lines[0]}: unknown columns {','.join(header)!r}, "
                f"expected {','.join(columns)} (if this is a data row, a field is malformed)"
            )
        cells, lines = cells[1:], lines[1:]
    return cells, lines


def _check_ids(path: Path, ids: np.ndarray, lines: np.ndarray, what: str) -> np.ndarray:
    # Ids are taken verbatim (the parser already skips whitespace after a comma).
    ids = ids.astype(str)
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InputError(f"{path}:{lines[empty[0]]}: empty {what}")
    return ids


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read `query_id,reference_id` (header optional); an empty reference_id marks a distractor."""
    path = Path(path)
    cells = _read_csv_cells(path, GT_COLUMNS)
    cells, lines = _split_header(
        path,
        cells,
        GT_COLUMNS,
        lambda row: (
            str(row[0]).strip() in GT_COLUMNS
            or str(row[0]).strip().lower() in ("query", "query_id", "queries")
        ),
    )
    if len(cells) == 0:
        raise InputError(f"{path}: no ground-truth rows")
    queries = _check_ids(path, cells[:, 0], lines, "query_id")
    references = cells[:, 1].astype(str)
    has_match = references != ""

    pairs = np.char.add(np.char.add(queries, "\x00"), references)
    _, first, counts = np.unique(pairs, return_index=True, return_counts=True)
    duplicated = np.flatnonzero(counts > 1)
    if len(duplicated):
        row = first[duplicated[0]]
        again = np.flatnonzero(pairs == pairs[row])[1]
        raise InputError(
            f"{path}:{lines[again]}: duplicate ground-truth row {queries[row]},{references[row]} "
            f"(first on line {lines[row]})"
        )
    distractors = set(queries[~has_match].tolist())
    conflicting = [i for i in np.flatnonzero(has_match) if queries[i] in distractors]
    if conflicting:
        i = conflicting[0]
        raise InputError(
            f"{path}:{lines[i]}: query {queries[i]} has a reference but is also listed as a "
            "distractor (empty reference_id)"
        )
    all_queries = np.asarray(list(dict.fromkeys(queries.tolist())), dtype=str)
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
    (InputError naming the file and line)."""
    path = Path(path)
    try:
        predictions = _read_predictions_fast(path)
    except (ValueError, InputError, UnicodeDecodeError):
        predictions = None
    # Anything unusual is re-read cell by cell, which finds and reports the offending line.
    return predictions if predictions is not None else _read_predictions_checked(path)


def _read_predictions_fast(path: Path) -> Predictions | None:
    """The common case in one native pass; None if any check fails (the caller then re-reads)."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "")
    has_header = [field.strip() for field in first.split(",")] == list(PREDICTION_COLUMNS)
    frame = pd.read_csv(
        path,
        header=0 if has_header else None,
        names=list(PREDICTION_COLUMNS),
        dtype={"query_id": str, "reference_id": str, "score": np.float64},
        na_filter=False,
        skipinitialspace=True,
        engine="c",
        float_precision="round_trip",  # exact: what write_predictions wrote is what we read
    )
    if len(frame) == 0:
        return None
    query = frame["query_id"].to_numpy(dtype=str)
    reference = frame["reference_id"].to_numpy(dtype=str)
    score = frame["score"].to_numpy(dtype=np.float64)
    if not np.isfinite(score).all() or (query == "").any() or (reference == "").any():
        return None
    predictions = Predictions(query=query, reference=reference, score=score)
    return None if find_duplicate_pair(predictions) is not None else predictions


def _read_predictions_checked(path: str | os.PathLike) -> Predictions:
    """Cell-by-cell reading that locates every kind of bad input (slower)."""
    import pandas as pd

    path = Path(path)
    cells = _read_csv_cells(path, PREDICTION_COLUMNS)

    def looks_like_header(row) -> bool:
        # A first row whose score does not parse as a number ("nan" and "inf" do) is a header.
        try:
            float(str(row[2]))
        except ValueError:
            return True
        return False

    cells, lines = _split_header(path, cells, PREDICTION_COLUMNS, looks_like_header)
    if len(cells) == 0:
        raise InputError(f"{path}: no predictions (the file has no data rows)")
    queries = _check_ids(path, cells[:, 0], lines, "query_id")
    references = _check_ids(path, cells[:, 1], lines, "reference_id")
    raw_scores = cells[:, 2]
    scores = pd.to_numeric(pd.Series(raw_scores), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = bad[0]
        what = (
            f"no score (expected {','.join(PREDICTION_COLUMNS)})"
            if str(raw_scores[i]).strip() == ""
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


def descriptor_splits(path: str | os.PathLike) -> list[str]:
    """The descriptor splits (`query`, `reference`, `training`) present in an HDF5 file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            return [name for name in DESCRIPTOR_SPLITS if name in handle]
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None


def read_descriptors(
    path: str | os.PathLike, split: str | None = None, *, max_dim: int = MAX_DESCRIPTOR_DIM
) -> Descriptors:
    """Read one split of a descriptor file; with `split=None` the file must hold exactly one.

    Errors (InputError, naming the file and dataset): missing split, ids that are not strings,
    duplicate ids, ids/rows count mismatch, non-float or non-2-D features, NaN/inf values,
    dimension above `max_dim` (256, the ISC descriptor-track limit)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None
    with handle:
        present = [name for name in DESCRIPTOR_SPLITS if name in handle]
        if split is None:
            if len(present) != 1:
                raise InputError(
                    f"{path}: expected exactly one descriptor split, found "
                    f"{present or 'none'} (datasets: {sorted(handle.keys())}); name the split"
                )
            split = present[0]
        if split not in handle:
            raise InputError(f"{path}: no dataset {split!r} (datasets: {sorted(handle.keys())})")
        if f"{split}_ids" not in handle:
            raise InputError(f"{path}: dataset {split!r} has no {split}_ids dataset")
        features_ds, ids_ds = handle[split], handle[f"{split}_ids"]
        if not isinstance(features_ds, h5py.Dataset) or features_ds.ndim != 2:
            raise InputError(f"{path}: dataset {split!r} must be a 2-D array (n, d)")
        if features_ds.dtype.kind != "f":
            raise InputError(
                f"{path}: dataset {split!r} has dtype {features_ds.dtype}, expected float32"
            )
        if h5py.check_string_dtype(ids_ds.dtype) is None and ids_ds.dtype.kind not in "SU":
            raise InputError(
                f"{path}: dataset {split}_ids has dtype {ids_ds.dtype}; ids must be strings"
            )
        if ids_ds.ndim != 1:
            raise InputError(f"{path}: dataset {split}_ids must be 1-D")
        features = np.asarray(features_ds[()], dtype=np.float32)
        raw_ids = ids_ds[()]
    if raw_ids.dtype.kind == "S":
        ids = np.char.decode(raw_ids, "utf-8")
    elif raw_ids.dtype.kind == "O":  # variable-length strings
        ids = np.asarray(
            [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in raw_ids], dtype=str
        )
    else:
        ids = raw_ids.astype(str)

    where = f"{path}: dataset {split!r}"
    if len(ids) != len(features):
        raise InputError(f"{where}: {len(features)} rows but {len(ids)} ids in {split}_ids")
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
    empty = np.flatnonzero(np.char.strip(ids) == "") if len(ids) else []
    if len(empty):
        raise InputError(f"{where}: row {int(empty[0])} has an empty id")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{where}: duplicate id {str(unique[counts > 1][0])!r}")
    return Descriptors(ids=ids, features=features)
