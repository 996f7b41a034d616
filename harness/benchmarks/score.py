"""`harness score` end to end: the CSV files read and checked, then scored, against plain Python.

Measured: `python -m harness score --gt GT.csv --predictions P.csv --json` run in this process
(argument parsing, both readers and their checks, the id-overlap checks, the metrics, the JSON
line), best of three; not the interpreter's start and imports (about half a second, the same for
any input). Reference: the plain computation a user would write, run once: the csv module reads
both files (cells stripped, header and blank lines skipped), every score goes through `float()`
and is checked finite, then `reference_metrics` (harness/benchmarks/metrics.py, which also refuses
duplicate pairs) scores them. Both read the same files, written by `write_ground_truth` and
`write_predictions` from `synthetic_case` (a DISC21-shaped case: 10 predictions per query, scores
with ties); the row says whether their metrics are identical. `read_seconds` and
`reference_read_seconds` are the reading alone on each side.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import tempfile
from pathlib import Path

DESCRIPTION = (
    "`score --gt --predictions` end to end (CSV parse + checks + metrics) on 2.5M predictions "
    "(250k with --quick) vs plain Python (csv module + the plain metrics)"
)
TARGET_SPEEDUP = 3.0
FULL_SIZE = 2_500_000
QUICK_SIZE = 250_000
METRIC_KEYS = (
    "average_precision",
    "recall_at_p90",
    "threshold_at_p90",
    "recall_at_rank1",
    "recall_at_rank10",
)


def plain_read(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """The rows of an ISC CSV with the csv module: cells stripped, blank lines and the header
    skipped, a row with another field count refused."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    rows = [row for row in rows if any(row)]
    if rows and [cell.lower() for cell in rows[0]] == list(columns):
        rows = rows[1:]
    for number, row in enumerate(rows, start=1):
        if len(row) != len(columns):
            raise ValueError(f"{path}: row {number} has {len(row)} fields")
    return rows


def plain_score(gt_path: Path, predictions_path: Path) -> tuple[dict, float]:
    """What `score` computes, in plain Python: the csv module reads both files, every id is checked
    non-empty and every score finite, then `reference_metrics` (harness/benchmarks/metrics.py)
    scores them. Returns the metrics and the seconds spent reading."""
    import time

    from harness.benchmarks.metrics import reference_metrics

    start = time.perf_counter()
    gt_pairs = []
    for query, reference in plain_read(gt_path, ("query_id", "reference_id")):
        if not query:
            raise ValueError("empty query id")
        if reference:
            gt_pairs.append((query, reference))
    rows = []
    for query, reference, text in plain_read(
        predictions_path, ("query_id", "reference_id", "score")
    ):
        score = float(text)
        if not (query and reference and math.isfinite(score)):
            raise ValueError(f"bad prediction {query},{reference},{text}")
        rows.append((query, reference, score))
    read_seconds = time.perf_counter() - start
    return reference_metrics(gt_pairs, rows), read_seconds


def harness_score(gt_path: Path, predictions_path: Path) -> dict:
    """`python -m harness score --gt ... --predictions ... --json`, in this process."""
    from harness.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["score", "--gt", str(gt_path), "--predictions", str(predictions_path), "--json"]
        )
    if code != 0:
        raise RuntimeError(f"score exited with {code}")
    return json.loads(out.getvalue())


def harness_read(gt_path: Path, predictions_path: Path) -> None:
    from harness.isc import read_ground_truth, read_predictions

    read_ground_truth(gt_path)
    read_predictions(predictions_path)


def run(quick: bool) -> list[dict]:
    import time

    from harness.benchmarks import timed
    from harness.benchmarks.metrics import synthetic_case
    from harness.isc import write_ground_truth, write_predictions

    n = QUICK_SIZE if quick else FULL_SIZE
    gt, predictions = synthetic_case(n)
    with tempfile.TemporaryDirectory(prefix="bench-score-") as directory:
        gt_path, predictions_path = Path(directory) / "gt.csv", Path(directory) / "p.csv"
        write_ground_truth(gt_path, gt)
        write_predictions(predictions_path, predictions)
        size_mb = predictions_path.stat().st_size / 1e6
        # A, B, A, A: the harness's best of three around one run of the (slow) reference.
        fast, first_seconds = timed(lambda: harness_score(gt_path, predictions_path))
        start = time.perf_counter()
        slow, reference_read_seconds = plain_score(gt_path, predictions_path)
        reference_seconds = time.perf_counter() - start
        fast, fast_seconds = timed(lambda: harness_score(gt_path, predictions_path), repeat=2)
        _, read_seconds = timed(lambda: harness_read(gt_path, predictions_path), repeat=3)
    seconds = min(first_seconds, fast_seconds)
    return [
        {
            "benchmark": "score",
            "case": f"{len(predictions):,} predictions ({size_mb:.0f} MB), {gt.n_gt:,} gt pairs",
            "n_predictions": len(predictions),
            "seconds": seconds,
            "reference_seconds": reference_seconds,
            "speedup": reference_seconds / seconds,
            "target": f">= {TARGET_SPEEDUP:g}x at {FULL_SIZE / 1e6:g}M",
            "read_seconds": read_seconds,
            "reference_read_seconds": reference_read_seconds,
            "identical": all(fast[key] == slow[key] for key in METRIC_KEYS),
        }
    ]
