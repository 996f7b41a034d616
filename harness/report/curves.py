"""Learning curves and the stale-negatives measure across runs: read each run's curve.jsonl
(harness/monitor.py), average over seeds, and read µAP at equal training wall-clock off them.

"µAP at equal wall-clock" compares methods at the training time every run of the report reached
(the shortest run's): each run's validation µAP is interpolated linearly between its two curve
points around that time, then averaged over seeds like any metric. It is read off the validation
subset's curve, not measured on the full split, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.run_dir import CURVE_FILENAME

CURVE_VALUES = {
    "val_micro_ap": "val_micro_ap",
    "val_recall_at_1": "val_recall_at_1",
    "consistency": "negatives/consistency",
    "negative_age": "negatives/negative_age",
}
AXES = ("step", "images_seen", "train_seconds")
EQUAL_TIME_METRIC = "val_map_at_equal_time"
EQUAL_TIME_NOTE = (
    "val µAP @ equal time: each run's validation µAP (fixed subset, eval.every) interpolated "
    "linearly at {seconds:.1f} s of training wall-clock, the time every run in this report "
    "reached; read off the curves, not measured on the full split"
)


def _read_points(run_dir: Path) -> list[dict]:
    path = run_dir / CURVE_FILENAME
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            return []  # a damaged file draws no curve rather than a wrong one
        if isinstance(point, dict) and isinstance(point.get("step"), int):
            points.append(point)
    return points


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per curve point of every run (`runs` with its `group` column): group, method, seed,
    run_id, the axes (step, images seen, training seconds) and the measured values (NaN where a
    point did not measure one)."""
    rows = []
    for _, run in runs.iterrows():
        for point in _read_points(Path(run["run_dir"])):
            row = {key: run[key] for key in ("group", "method", "seed", "run_id")}
            row.update({axis: float(point.get(axis, np.nan)) for axis in AXES})
            row.update({name: float(point.get(key, np.nan)) for name, key in CURVE_VALUES.items()})
            rows.append(row)
    columns = ["group", "method", "seed", "run_id", *AXES, *CURVE_VALUES]
    return pd.DataFrame(rows, columns=columns)


def mean_curves(long: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per group and step: the mean and sample std over seeds of `value` and the mean of each
    axis (seeds share the steps; their wall-clock differs)."""
    points = long.dropna(subset=[value])
    if points.empty:
        return pd.DataFrame(columns=["group", "method", "step", "mean", "std", "n", *AXES[1:]])
    grouped = points.groupby(["group", "method", "step"], sort=True)
    out = grouped[value].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    for axis in AXES[1:]:
        out[axis] = grouped[axis].mean()
    return out.reset_index()


def equal_time(long: pd.DataFrame) -> tuple[float | None, dict[str, float]]:
    """(T, run_id -> validation µAP at T): T is the shortest final training time among the runs
    that train (a run that does not, `none`, has its one point at any T)."""
    val = long.dropna(subset=["val_micro_ap", "train_seconds"])
    finals = val.groupby("run_id")["train_seconds"].max()
    trained = finals[finals > 0]
    if trained.empty:
        return None, {}
    seconds = float(trained.min())
    values = {}
    for run_id, points in val.groupby("run_id"):
        points = points.sort_values("train_seconds")
        values[run_id] = float(np.interp(seconds, points["train_seconds"], points["val_micro_ap"]))
    return seconds, values


def with_equal_time_metric(
    runs: pd.DataFrame, long: pd.DataFrame
) -> tuple[pd.DataFrame, float | None]:
    """`runs` with the per-run EQUAL_TIME_METRIC column (NaN without a validation curve)."""
    seconds, values = equal_time(long)
    runs = runs.copy()
    runs[EQUAL_TIME_METRIC] = runs["run_id"].astype(str).map(values).astype(float)
    return runs, seconds
