"""µAP per edit family: per run, from the benchmark's metadata.csv and the run's predictions; then
per group and edit family, and as a table.

A family's µAP restricts the ground truth to the queries whose metadata lists the edit family, keeps
every distractor query, and scores the predictions of those queries with the ISC evaluation core
(`harness.isc.evaluate`); nothing here re-implements the metric.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.report.records import SkippedRun, as_float, resolve_benchmark
from harness.report.tables import (
    DEFAULT_GROUP_BY,
    add_group_column,
    check_group_by,
    format_cell,
)

# The long table of per-run, per-family µAP (`per_edit_runs`).
EDIT_RUN_COLUMNS = ["run_id", "family", "map", "n_gt"]


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The benchmark's metadata.csv, checked by the layout reader, with `edits` split into lists."""
    from harness.data.layout import read_metadata as read_metadata_csv

    try:
        frame = read_metadata_csv(Path(path))
    except OSError as err:
        raise InputError(f"{path}: cannot read metadata: {err}") from err
    frame["edits"] = [[e.strip() for e in text.split("|") if e.strip()] for text in frame["edits"]]
    return frame


def edit_families(metadata: pd.DataFrame) -> list[str]:
    return sorted({family for edits in metadata["edits"] for family in edits})


def family_masks(gt, metadata: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per edit family, a boolean over `gt.queries`: the query's metadata `edits` list the family."""
    query_index = pd.Index(gt.queries)
    rows = query_index.get_indexer(metadata["query_id"].to_numpy(str))
    masks: dict[str, np.ndarray] = {}
    for family in edit_families(metadata):
        listed = np.fromiter((family in e for e in metadata["edits"]), bool, len(metadata))
        mask = np.zeros(len(query_index), dtype=bool)
        mask[rows[listed & (rows >= 0)]] = True  # metadata rows of unknown queries are ignored
        masks[family] = mask
    return masks


def edit_family_map(gt, metadata: pd.DataFrame, predictions) -> dict[str, dict[str, float]]:
    """Per edit family: the ISC µAP of the family's queries plus every distractor query, and the
    number of true pairs it covers.

    The restricted ground truth lists the family's queries and all distractors (queries with no true
    pair) and only the family's true pairs; the predictions kept are those of the listed queries.
    Ids are matched once as integer positions in `gt.queries`, so each family costs a few boolean
    masks, not a string join (14 families at DISC21's 50k queries and 500k predictions: 1.4 s, was
    5.1 s with np.isin on the id strings).
    """
    from harness.isc import GroundTruth, Predictions, evaluate

    query_index = pd.Index(gt.queries)
    pair_rows = query_index.get_indexer(gt.query)
    prediction_rows = query_index.get_indexer(predictions.query)
    distractor = np.ones(len(query_index), dtype=bool)
    distractor[pair_rows[pair_rows >= 0]] = False
    result: dict[str, dict[str, float]] = {}
    for family, in_family in family_masks(gt, metadata).items():
        keep_pairs = in_family[pair_rows] & (pair_rows >= 0)
        if not keep_pairs.any():
            continue  # a family seen only on distractors has no µAP
        keep_queries = in_family | distractor
        family_gt = GroundTruth(
            queries=gt.queries[keep_queries],
            query=gt.query[keep_pairs],
            reference=gt.reference[keep_pairs],
        )
        keep = (prediction_rows >= 0) & keep_queries[prediction_rows]
        family_predictions = Predictions(
            query=predictions.query[keep],
            reference=predictions.reference[keep],
            score=predictions.score[keep],
        )
        metrics = evaluate(family_gt, family_predictions)
        result[family] = {
            "map": as_float(metrics.to_dict()["average_precision"]),
            "n_gt": float(keep_pairs.sum()),
        }
    return result


def _edit_truth(benchmark: Path) -> tuple[object, pd.DataFrame] | str:
    """(ground truth, metadata) of a benchmark, or why the per-edit table cannot use it."""
    from harness.data.layout import METADATA_FILE, find_ground_truth
    from harness.isc import read_ground_truth

    if not (benchmark / METADATA_FILE).is_file():
        return f"per-edit table: {benchmark} has no {METADATA_FILE}"
    try:
        return read_ground_truth(find_ground_truth(benchmark)), read_metadata(
            benchmark / METADATA_FILE
        )
    except InputError as err:
        return f"per-edit table: {err}"


def per_edit_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[SkippedRun]]:
    """Long table (run_id, family, map, n_gt) over all runs whose benchmark has a metadata.csv.

    Runs whose benchmark, metadata or predictions cannot be read are listed ("per-edit table: ...")
    and stay in the main table, as are runs whose benchmark no longer holds what it held when they
    ran (its fingerprint changed): their predictions would be scored against another truth. Each
    benchmark's ground truth, metadata and fingerprint are read once.
    """
    from harness.isc import read_predictions
    from harness.record import benchmark_fingerprint

    rows: list[dict[str, object]] = []
    skipped: list[SkippedRun] = []
    benchmarks: dict[Path, tuple[object, pd.DataFrame] | str] = {}
    fingerprints: dict[Path, str | None] = {}
    for _, run in runs.iterrows():
        benchmark = resolve_benchmark(run["benchmark"], run["run_dir"]) or resolve_benchmark(
            run["benchmark_path"], run["run_dir"]
        )
        if benchmark is None:
            skipped.append(
                SkippedRun(
                    run["run_dir"], f"per-edit table: benchmark {run['benchmark_path']!r} not found"
                )
            )
            continue
        if benchmark not in benchmarks:
            benchmarks[benchmark] = _edit_truth(benchmark)
            fingerprints[benchmark] = benchmark_fingerprint(benchmark)
        recorded = run["benchmark_fingerprint"]
        if isinstance(recorded, str) and fingerprints[benchmark] != recorded:
            skipped.append(
                SkippedRun(
                    run["run_dir"],
                    f"per-edit table: {benchmark} has changed since the run (fingerprint "
                    f"{recorded} then, {fingerprints[benchmark]} now)",
                )
            )
            continue
        if isinstance(benchmarks[benchmark], str):
            skipped.append(SkippedRun(run["run_dir"], benchmarks[benchmark]))
            continue
        gt, metadata = benchmarks[benchmark]
        predictions_path = Path(run["run_dir"]) / run["predictions_file"]
        if not predictions_path.is_file():
            skipped.append(
                SkippedRun(run["run_dir"], f"per-edit table: {predictions_path} not found")
            )
            continue
        try:
            per_family = edit_family_map(gt, metadata, read_predictions(predictions_path))
        except InputError as err:
            skipped.append(SkippedRun(run["run_dir"], f"per-edit table: {err}"))
            continue
        for family, values in per_family.items():
            rows.append({"run_id": run["run_id"], "family": family, **values})
    return pd.DataFrame(rows, columns=EDIT_RUN_COLUMNS), skipped


def summarize_edits(
    runs: pd.DataFrame, edits: pd.DataFrame, group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> pd.DataFrame:
    """Per group and edit family: µAP mean, std (ddof=1), the number of runs with the family
    (`n_seeds`) and of those with a µAP averaged (`map_n`)."""
    group_by = check_group_by(runs, group_by)
    runs = add_group_column(runs, group_by)
    merged = edits.merge(runs[["run_id", "group", *group_by]], on="run_id", how="inner")
    out = (
        merged.groupby([*group_by, "group", "family"], sort=True, dropna=False)["map"]
        .agg(map_mean="mean", map_std="std", map_n="count", n_seeds="size")
        .reset_index()
    )
    return out


def edit_table(edit_summary: pd.DataFrame, *, pm: str = " ± ") -> pd.DataFrame:
    """Groups as rows, edit families as columns, "mean ± std" µAP cells."""
    if edit_summary.empty:
        return pd.DataFrame(columns=["group"])
    cells = edit_summary.assign(
        cell=[
            format_cell(m, s, n, total, 4, pm=pm)
            for m, s, n, total in zip(
                edit_summary["map_mean"],
                edit_summary["map_std"],
                edit_summary["map_n"],
                edit_summary["n_seeds"],
                strict=True,
            )
        ]
    )
    order = list(dict.fromkeys(cells["group"]))
    table = cells.pivot(index="group", columns="family", values="cell").reindex(order)
    return table.fillna("—").reset_index().rename_axis(columns=None)
