"""Learning curves in the report (harness/report/curves.py, harness/figures.py): seed means with
their spread, µAP at equal wall-clock read off the curves, and the figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.figures import plot_learning_curves, plot_stale_negatives
from harness.report.curves import equal_time, load_curves, mean_curves, with_equal_time_metric


def _runs(tmp_path, curves: dict[str, list[dict]]) -> pd.DataFrame:
    rows = []
    for run_id, points in curves.items():
        run_dir = tmp_path / run_id
        run_dir.mkdir()
        (run_dir / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
        method, seed = run_id.split("-")
        rows.append(
            {
                "run_id": run_id,
                "run_dir": str(run_dir),
                "group": method,
                "method": method,
                "seed": int(seed),
            }
        )
    return pd.DataFrame(rows)


def point(step, seconds, val=None, **negatives):
    p = {"step": step, "images_seen": 8 * step, "train_seconds": seconds}
    if val is not None:
        p["val_micro_ap"] = val
    p.update({f"negatives/{k}": v for k, v in negatives.items()})
    return p


def test_equal_time_interpolates_each_run_at_the_shortest_runs_end(tmp_path):
    runs = _runs(
        tmp_path,
        {
            "qk-0": [point(0, 0.0, 0.4), point(10, 10.0, 0.6)],
            "moco-0": [point(0, 0.0, 0.4), point(5, 5.0, 0.5), point(10, 20.0, 0.7)],
            "none-0": [point(0, 0.0, 0.3)],  # trains nothing: its one point holds at any time
        },
    )
    long = load_curves(runs)
    seconds, values = equal_time(long)
    assert seconds == 10.0
    assert values == pytest.approx({"qk-0": 0.6, "moco-0": 0.5 + 0.2 * 5 / 15, "none-0": 0.3})
    with_metric, _ = with_equal_time_metric(runs, long)
    assert with_metric.set_index("run_id")["val_map_at_equal_time"]["qk-0"] == pytest.approx(0.6)


def test_mean_curves_average_seeds_step_by_step(tmp_path):
    runs = _runs(
        tmp_path,
        {
            "qk-0": [point(0, 0.0, 0.4), point(10, 9.0, 0.6, consistency=1.0, negative_age=3)],
            "qk-1": [point(0, 0.0, 0.5), point(10, 11.0, 0.8, consistency=1.0, negative_age=5)],
        },
    )
    long = load_curves(runs)
    curve = mean_curves(long, "val_micro_ap").set_index("step")
    assert curve.loc[10, "mean"] == pytest.approx(0.7)
    assert curve.loc[10, "std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert curve.loc[10, "train_seconds"] == pytest.approx(10.0) and curve.loc[10, "n"] == 2
    ages = mean_curves(long, "negative_age")
    assert list(ages["step"]) == [10] and ages["mean"].iloc[0] == 4
    assert plot_learning_curves(long) is not None and plot_stale_negatives(long) is not None


def test_no_curves_draw_nothing_and_a_damaged_file_draws_no_wrong_curve(tmp_path):
    runs = _runs(tmp_path, {"simclr-0": [point(0, 0.0)]})
    long = load_curves(runs)
    assert plot_stale_negatives(long) is None and plot_learning_curves(long) is None
    (tmp_path / "simclr-0" / "curve.jsonl").write_text('{"step": 0, "val_micro_ap": 0.5}\n{"ste')
    assert load_curves(runs).empty
    assert equal_time(load_curves(runs)) == (None, {})
