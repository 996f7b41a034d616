"""Tables over the runs: groups, per-group summaries (mean and sample std over seeds), the main
table as "mean ± std" display strings, and its Markdown and LaTeX text.

    summary = summarize(loaded.runs)   # one row per group: <metric>_mean, <metric>_std, n_seeds
    table = main_table(summary)        # display strings "mean ± std"; to_markdown / to_latex
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from harness.errors import ConfigError
from harness.report.records import RECORD_METRICS, format_value, is_missing

DEFAULT_GROUP_BY: tuple[str, ...] = ("method", "setting")


# Columns of the main table: (metric column, header, decimals).
MAIN_TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("map", "µAP", 4),
    ("map_normalized", "µAP (norm.)", 4),
    ("recall_at_p90", "R@P90", 4),
    ("recall_at_rank1", "R@rank1", 4),
    ("negatives_per_step", "negatives/step", 0),
    ("images_seen", "images seen", 0),
    ("total_seconds", "wall-clock (s)", 1),
    ("peak_cpu_mb", "peak RSS (MB)", 0),
    ("peak_cuda_mb", "peak CUDA (MB)", 0),
)


def check_group_by(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """The grouping columns, validated against the table (a ConfigError names an unknown one)."""
    group_by = [c.strip() for c in group_by if c.strip()]
    if not group_by:
        raise ConfigError("--group-by: give at least one column, e.g. method,setting")
    unknown = [c for c in group_by if c not in runs.columns]
    if unknown:
        known = ", ".join(c for c in runs.columns if not c.endswith("_file"))
        raise ConfigError(f"--group-by: unknown column(s) {', '.join(unknown)}; known: {known}")
    if "seed" in group_by:
        raise ConfigError(
            "--group-by: seed cannot be a grouping column (groups aggregate over seeds)"
        )
    return group_by


def group_label(values: dict[str, object]) -> str:
    """Readable name of a group from its grouping values: "qk", "qk (num_negatives=256)".

    A missing value is left out, except in the method's own section, where it is a null setting
    (`qk.num_negatives=null`); other methods' sections are simply absent from a run's config."""
    method = values.get("method")
    rest = []
    for key, value in values.items():
        if key == "method" or (key == "setting" and value == "default"):
            continue
        if is_missing(value):
            if method is not None and key.startswith(f"{method}."):
                rest.append(f"{key}=null")
            continue
        rest.append(format_value(value) if key == "setting" else f"{key}={format_value(value)}")
    if method is None:
        return ", ".join(rest) or "all"
    return f"{method} ({', '.join(rest)})" if rest else str(method)


def add_group_column(runs: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """A copy of `runs` with a `group` column naming each run's group."""
    runs = runs.copy()
    runs["group"] = [
        group_label({c: row[c] for c in group_by}) for _, row in runs[list(group_by)].iterrows()
    ]
    return runs


def summarize(
    runs: pd.DataFrame,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    metrics: Sequence[str] = tuple(RECORD_METRICS),
) -> pd.DataFrame:
    """One row per group: the grouping columns, `group`, `n_seeds`, `seeds`, and for each metric its
    mean and sample standard deviation (ddof=1; NaN with one seed) over the group's runs.

    Undefined values (recall@P90 when no cutoff reaches precision 0.9) are left out of that
    metric's mean and std; `n_seeds` still counts every run of the group."""
    group_by = check_group_by(runs, group_by)
    runs = add_group_column(runs, group_by)
    metrics = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby(list(group_by), sort=True, dropna=False)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    info = grouped.agg(
        group=("group", "first"),
        n_seeds=("run_id", "size"),
        seeds=("seed", lambda s: ",".join(format_value(v) for v in sorted(s))),
        budget_kind=("budget_kind", lambda s: "/".join(sorted({str(v) for v in s}))),
    )
    summary = info.join(stats).reset_index()
    return summary


def format_mean_std(mean: float, std: float, decimals: int, *, pm: str = " ± ") -> str:
    """ "0.3403 ± 0.0120"; the mean alone when the spread is undefined or zero; "—" when no value."""
    if math.isnan(mean):
        return "—"
    text = f"{mean:,.{decimals}f}" if decimals == 0 else f"{mean:.{decimals}f}"
    if math.isnan(std) or std == 0:
        return text
    spread = f"{std:,.{decimals}f}" if decimals == 0 else f"{std:.{decimals}f}"
    return f"{text}{pm}{spread}"


def main_table(summary: pd.DataFrame, *, pm: str = " ± ") -> pd.DataFrame:
    """The main table as display strings: group columns, seeds, then each metric as mean ± std.

    Metric columns with no value in any group (e.g. CUDA memory on a CPU run, µAP normalized when no
    run normalized) are left out.
    """
    columns: dict[str, list[str]] = {"group": list(summary["group"])}
    columns["seeds"] = [str(n) for n in summary["n_seeds"]]
    budget = []
    for _, row in summary.iterrows():
        value = row.get("budget_value_mean", math.nan)
        budget.append("—" if math.isnan(value) else f"{format_value(value)} {row['budget_kind']}")
    columns["budget"] = budget
    for metric, header, decimals in MAIN_TABLE_COLUMNS:
        mean_column = f"{metric}_mean"
        if mean_column not in summary or summary[mean_column].isna().all():
            continue
        columns[header] = [
            format_mean_std(m, s, decimals, pm=pm)
            for m, s in zip(summary[mean_column], summary[f"{metric}_std"], strict=True)
        ]
    return pd.DataFrame(columns)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (first column left-aligned, the rest right-aligned)."""
    header = [str(c) for c in table.columns]
    rows = [[str(v).replace("|", "\\|") for v in row] for row in table.itertuples(index=False)]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return (
        "\n".join([line(header), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)]) + "\n"
    )


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs LaTeX table; "±" becomes `$\\pm$`, "µ" `$\\mu$`, everything else is escaped."""

    def cell(value) -> str:
        text = latex_escape(str(value))
        return text.replace("±", r"$\pm$").replace("µ", r"$\mu$").replace("—", "--")

    escaped = table.map(cell)
    escaped.columns = [cell(c) for c in table.columns]
    column_format = "l" + "r" * (len(table.columns) - 1)
    return escaped.to_latex(
        index=False,
        escape=False,
        column_format=column_format,
        caption=None if caption is None else cell(caption),
    )
