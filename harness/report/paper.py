"""The paper comparison (`python -m harness figures paper`): QK iteration against each baseline at
equal budget, the difference of their seed means with its standard error, the negatives-per-step
sweeps, and the QK paper's own numbers beside them.

Which runs form the equal-budget comparison is read from the sweep directory through
`harness.sweep_dir` and `harness.sweep_spec`; method names come from the method registry (`display_name`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.atomic import atomic_write_text
from harness.report.build import Report, build_report
from harness.report.records import SkippedRun
from harness.report.tables import format_mean_std, main_table, to_markdown
from harness.sweep_dir import grid_points, is_sweep_directory, submitted_spec_path
from harness.sweep_spec import load_sweep_spec

# The seed paper's own figures (DISC21 phase 1 µAP, QK iteration against a SimCLR-style method with
# in-batch negatives only). Quoted next to ours for orientation: a different benchmark and budget.
SEED_REPORTED = {"qk": 0.3403, "simclr": 0.2001}
PAPER_METHOD = "qk"
PAPER_BASELINES = ("simclr", "moco", "membank", "sscd", "xbm", "none")


def method_name(method: str) -> str:
    """The method's display name from the method registry; a method it does not know (a record of
    a method since removed) keeps its registry key."""
    import methods  # noqa: F401  (registers every method)
    from methods.registry import get_method, list_methods

    return get_method(method).display_name if method in list_methods() else method


@dataclass(frozen=True)
class Difference:
    """The seed mean of a metric (µAP by default) of `method` minus that of `baseline`, with the
    spread of that difference."""

    method: str
    baseline: str
    delta: float
    standard_error: float  # Welch: sqrt(s_a²/n_a + s_b²/n_b); NaN with fewer than 2 seeds a side
    n_method: int
    n_baseline: int


def mean_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean(a) − mean(b), its standard error sqrt(var_a/n_a + var_b/n_b)); sample variances."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    delta = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return delta, math.nan
    return delta, float(math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))


def _is_main_product(axes: dict[str, list]) -> bool:
    """A grid product is part of the main comparison when every axis besides method and seed has a
    single value (fixed settings); an axis with several values makes it a sweep of that key."""
    return all(len(values) == 1 for key, values in axes.items() if key not in ("method", "seed"))


def _point_in_product(point: dict, axes: dict[str, list]) -> bool:
    return set(point) == set(axes) and all(point[key] in axes[key] for key in axes)


def main_comparison_runs(runs: pd.DataFrame, sweep_dir: str | os.PathLike | None) -> pd.Series:
    """Which runs form the equal-budget comparison (a boolean per run).

    Read from the sweep directory: the runs whose grid point (manifest.json) comes from a product of
    the sweep file (sweep.yaml) in which no key but method and seed takes several values, i.e. not
    from a sweep over a key such as qk.num_negatives. With a manifest but no sweep file: the runs
    whose grid point sets only method and seed. With neither: per method, the group with the most
    seeds (ties: the first by name).
    """
    if sweep_dir is not None and is_sweep_directory(sweep_dir):
        points = grid_points(sweep_dir)
        spec_path = submitted_spec_path(sweep_dir)
        if spec_path is not None:
            products = [a for a in load_sweep_spec(spec_path).grid if _is_main_product(a)]
            main_ids = {
                run_id
                for run_id, point in points.items()
                if any(_point_in_product(point, axes) for axes in products)
            }
        else:
            main_ids = {
                run_id for run_id, point in points.items() if set(point) <= {"method", "seed"}
            }
        return runs["run_id"].astype(str).isin(main_ids)
    sizes = runs.groupby(["method", "group"]).size().reset_index(name="n")
    sizes = sizes.sort_values(["method", "n", "group"], ascending=[True, False, True])
    chosen = set(sizes.drop_duplicates("method")["group"])
    return runs["group"].isin(chosen)


def comparison_rule(sweep_dir: str | os.PathLike | None) -> str:
    """In words, which rule `main_comparison_runs` applies to this directory."""
    if sweep_dir is None or not is_sweep_directory(sweep_dir):
        return "Per method, the group with the most seeds (no sweep manifest found)."
    if submitted_spec_path(sweep_dir) is not None:
        return "The runs of the sweep's products in which no key but method and seed takes several values."
    return "The runs whose grid point sets only method and seed (sweep.yaml not found)."


def paper_differences(main_runs: pd.DataFrame, metric: str = "map") -> list[Difference]:
    """QK minus each baseline present, over the per-seed values of `metric`."""
    values = {m: rows[metric].dropna().to_numpy() for m, rows in main_runs.groupby("method")}
    if PAPER_METHOD not in values:
        return []
    out = []
    for baseline in PAPER_BASELINES:
        if baseline in values:
            delta, se = mean_difference(values[PAPER_METHOD], values[baseline])
            out.append(
                Difference(
                    PAPER_METHOD,
                    baseline,
                    delta,
                    se,
                    len(values[PAPER_METHOD]),
                    len(values[baseline]),
                )
            )
    return out


def describe_difference(diff: Difference, metric_name: str = "µAP") -> str:
    """One sentence: the direction, the size with its standard error, and whether seeds resolve it."""
    name, base = method_name(diff.method), method_name(diff.baseline)
    if math.isnan(diff.delta):
        return f"{name} vs {base}: no runs to compare."
    direction = "higher" if diff.delta > 0 else "lower" if diff.delta < 0 else "equal"
    text = f"{name} vs {base}: {metric_name} {direction} by {abs(diff.delta):.4f}"
    if math.isnan(diff.standard_error):
        return text + f" (one seed on a side, n = {diff.n_method}/{diff.n_baseline}: no spread)."
    text += f" ± {diff.standard_error:.4f} (standard error, n = {diff.n_method}/{diff.n_baseline} seeds)"
    if abs(diff.delta) >= 2 * diff.standard_error:
        return text + "; larger than two standard errors."
    return text + "; within two standard errors: these seeds do not separate them."


def paper_summary(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    main: pd.Series,
    *,
    sweep_name: str,
    sweep_dir: str,
    skipped: Sequence[SkippedRun] = (),
) -> str:
    """The Markdown summary of the paper comparison: the equal-budget table, each QK − baseline
    difference with its spread, the negatives sweeps, and the seed paper's numbers beside them."""
    main_runs = runs[main]
    main_summary = summary[summary["group"].isin(set(main_runs["group"]))]
    lines = [
        f"# Method comparison: `{sweep_name}`\n",
        f"{len(runs)} complete runs from `{sweep_dir}`"
        + (f" ({len(skipped)} skipped, listed in report.md)" if skipped else "")
        + f". Benchmark: `{', '.join(sorted({str(p) for p in runs['benchmark']}))}`.\n",
        "## Equal budget\n",
        f"{comparison_rule(sweep_dir)} Mean ± sample std over seeds.\n",
        to_markdown(main_table(main_summary)),
        "## Differences\n",
        "QK iteration minus each baseline (difference of the seed means ± its standard error):\n",
    ]
    for metric, metric_name in (("map", "µAP"), ("map_normalized", "score-normalized µAP")):
        if metric in main_runs and main_runs[metric].notna().any():
            lines += [
                f"- {describe_difference(d, metric_name)}"
                for d in paper_differences(main_runs, metric)
            ]
    if not paper_differences(main_runs):
        lines.append("- no QK runs in the equal-budget comparison: nothing to compare.")
    reported = SEED_REPORTED["qk"] - SEED_REPORTED["simclr"]
    lines += [
        "",
        f"For orientation, the QK iteration paper reports µAP {SEED_REPORTED['qk']:.4f} for QK against "
        f"{SEED_REPORTED['simclr']:.4f} for a SimCLR-style method with in-batch negatives "
        f"(+{reported:.4f}) on DISC21 phase 1. That is not this benchmark (size, images, budget and "
        "backbone all differ), so only the direction of the difference is comparable.\n",
    ]
    sweeps = summary[summary["method"].isin(["qk", "moco"])]
    varied = sweeps.groupby("method")["negatives_per_step_mean"].nunique()
    for method in varied[varied > 1].index:
        rows = sweeps[sweeps["method"] == method].sort_values("negatives_per_step_mean")
        if not lines[-1].startswith("## Negatives"):
            lines.append("## Negatives per step\n")
        points = ", ".join(
            f"{r['negatives_per_step_mean']:,.0f}: {format_mean_std(r['map_mean'], r['map_std'], 4)}"
            for _, r in rows.iterrows()
        )
        lines.append(f"- {method_name(method)} (negatives: µAP): {points}")
    lines.append("")
    return "\n".join(lines)


def build_paper_report(
    sweep_dir: str | os.PathLike, out_dir: str | os.PathLike, *, sweep_name: str
) -> tuple[Report, str]:
    """The report over one sweep directory plus `summary.md` (see `paper_summary`)."""

    def comparison(runs: pd.DataFrame) -> pd.Series:
        return main_comparison_runs(runs, sweep_dir)

    built = build_report([sweep_dir], out_dir, comparison=comparison)
    main = comparison(built.runs)
    text = paper_summary(
        built.runs,
        built.summary,
        main,
        sweep_name=sweep_name,
        sweep_dir=str(sweep_dir),
        skipped=built.skipped,
    )
    path = Path(out_dir) / "summary.md"
    atomic_write_text(path, text)
    built.written.append(path)
    return built, text
