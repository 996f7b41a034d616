"""Tables over the runs: groups, per-group summaries (mean and sample std over seeds), the main
table as "mean ± std" display strings, and its Markdown and LaTeX text.

    grouping = protocol_grouping(loaded.runs, ["method"], loaded.config_columns)
    summary = summarize(loaded.runs, grouping.columns)   # <metric>_mean, _std, _n; n_seeds
    table = main_table(summary)        # display strings "mean ± std"; to_markdown / to_latex

Runs of one group must share a protocol (every config key outside the method's own section, the
benchmark's identity among them): a `--group-by` that leaves such a key out is split by it, and the
split is named (`protocol_grouping`). A cell averaged over fewer runs than its group holds says so:
"0.4512 ± 0.0100 (2 of 3)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from harness.errors import ConfigError
from harness.report.records import RECORD_METRICS, format_value, is_missing, varying_columns

DEFAULT_GROUP_BY: tuple[str, ...] = ("method", "setting")

SPLIT_NOTE = (
    "--group-by {asked}: runs of one group differed in {keys}, which set the protocol; the groups "
    "are split by them (--ignore-key KEY averages over a key on purpose)"
)
POOLED_NOTE = (
    "group {group} pools {n} settings that differ in {keys}: its mean and ± are over settings and "
    "seeds together, and its seeds column counts runs"
)
COUNT_NOTE = (
    "a cell marked (n of m) averages the n of its group's m runs that have the value; the others "
    "have none (undefined, such as recall@P90 when no cutoff reaches precision 0.9) or one left out "
    "(see above)"
)


# Columns of the main table: (metric column, header, decimals).
MAIN_TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("map", "µAP", 4),
    ("map_normalized", "µAP (norm.)", 4),
    ("recall_at_p90", "R@P90", 4),
    ("recall_at_rank1", "R@rank1", 4),
    ("val_map_at_equal_time", "val µAP @ equal time", 4),
    ("negatives_per_step", "negatives/step", 0),
    ("consistency", "neg. cosine now", 4),
    ("negative_age", "neg. age (steps)", 1),
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


@dataclass(frozen=True)
class Grouping:
    """The columns the groups are formed by: those asked for plus `split_by`, the protocol keys
    that differed inside an asked group; and what a reader must know about them (`notes`)."""

    columns: list[str]
    split_by: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def protocol_grouping(
    runs: pd.DataFrame, group_by: Sequence[str], config_columns: Sequence[str]
) -> Grouping:
    """Group by `group_by`, split so that no group mixes protocols; name the keys split by.

    A protocol key is any setting-defining column (`config_columns`: config keys not ignored, the
    benchmark's identity) outside the run's own method section, and the method itself. Averaging
    runs that differ in one (budgets, backbone, benchmark) would print a budget no run had and count
    two seed-0 runs as two seeds; splitting keeps every row one protocol, and the note says which
    keys did it, so `--group-by method` still reads as asked where runs agree. Keys of the method's
    own section (`qk.num_negatives`) may be pooled on purpose: such groups are named in a note.
    """
    group_by = check_group_by(runs, group_by)
    methods = {str(m) for m in runs["method"].unique()}

    def own(column: str) -> bool:
        return column.split(".", 1)[0] in methods and "." in column

    candidates = ["method"] + [c for c in config_columns if c != "config.method" and not own(c)]
    candidates = [c for c in candidates if c in runs.columns and c not in group_by]
    split_by = varying_columns(runs, candidates, within=group_by)
    notes = []
    if split_by:
        notes.append(SPLIT_NOTE.format(asked=",".join(group_by), keys=", ".join(split_by)))
    columns = [*group_by, *split_by]
    if "setting_id" in runs.columns:
        labelled = add_group_column(runs, columns)
        for group, rows in labelled.groupby("group", sort=True):
            if rows["setting_id"].nunique() > 1:
                keys = varying_columns(rows, [c for c in config_columns if c in rows.columns])
                notes.append(
                    POOLED_NOTE.format(
                        group=group, n=rows["setting_id"].nunique(), keys=", ".join(keys)
                    )
                )
    return Grouping(columns=columns, split_by=split_by, notes=notes)


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
    """One row per group: the grouping columns, `group`, `n_seeds` (its runs), `n_settings`,
    `seeds`, the budget values, and for each metric its mean and sample standard deviation (ddof=1;
    NaN with one value) over the group's runs, and `<metric>_n`, the number of runs averaged.

    Values a run does not have (recall@P90 when no cutoff reaches precision 0.9, or a non-finite
    value the loader left out) are not in that metric's mean and std; `<metric>_n` then falls short
    of `n_seeds`, which counts every run of the group. Groups should not mix protocols: see
    `protocol_grouping`."""
    group_by = check_group_by(runs, group_by)
    runs = add_group_column(runs, group_by)
    metrics = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby(list(group_by), sort=True, dropna=False)
    stats = grouped[metrics].agg(["mean", "std", "count"])
    stats.columns = [
        f"{metric}_{'n' if stat == 'count' else stat}" for metric, stat in stats.columns
    ]
    info = grouped.agg(
        group=("group", "first"),
        n_seeds=("run_id", "size"),
        seeds=("seed", lambda s: ",".join(format_value(v) for v in sorted(s))),
        budget_kind=("budget_kind", lambda s: "/".join(sorted({str(v) for v in s}))),
        budget_values=(
            "budget_value",
            lambda s: "/".join(format_value(v) for v in sorted(set(s.dropna()))),
        ),
    )
    info.insert(2, "n_settings", grouped["setting_id"].nunique() if "setting_id" in runs else 1)
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


def format_cell(
    mean: float, std: float, n: float, total: float, decimals: int, *, pm: str = " ± "
) -> str:
    """`format_mean_std`, marked "(n of m)" when only n of the group's m runs have the value."""
    text = format_mean_std(mean, std, decimals, pm=pm)
    if text == "—" or math.isnan(n) or n >= total:
        return text
    return f"{text} ({int(n)} of {int(total)})"


def main_table(summary: pd.DataFrame, *, pm: str = " ± ") -> pd.DataFrame:
    """The main table as display strings: group columns, seeds, then each metric as mean ± std.

    Metric columns with no value in any group (e.g. CUDA memory on a CPU run, µAP normalized when no
    run normalized) are left out.
    """
    columns: dict[str, list[str]] = {"group": list(summary["group"])}
    columns["seeds"] = [
        str(n) if k <= 1 else f"{n} ({k} settings)"
        for n, k in zip(summary["n_seeds"], summary["n_settings"], strict=True)
    ]
    columns["budget"] = [
        f"{values} {kind}" if values else "—"
        for values, kind in zip(summary["budget_values"], summary["budget_kind"], strict=True)
    ]
    for metric, header, decimals in MAIN_TABLE_COLUMNS:
        mean_column = f"{metric}_mean"
        if mean_column not in summary or summary[mean_column].isna().all():
            continue
        counts = summary.get(f"{metric}_n", summary["n_seeds"])
        columns[header] = [
            format_cell(m, s, n, total, decimals, pm=pm)
            for m, s, n, total in zip(
                summary[mean_column],
                summary[f"{metric}_std"],
                counts,
                summary["n_seeds"],
                strict=True,
            )
        ]
    return pd.DataFrame(columns)


def shows_partial_counts(summary: pd.DataFrame) -> bool:
    """Whether the main table marks a cell "(n of m)"."""
    for metric, _, _ in MAIN_TABLE_COLUMNS:
        if f"{metric}_n" in summary:
            shown = summary[f"{metric}_mean"].notna()
            if (summary.loc[shown, f"{metric}_n"] < summary.loc[shown, "n_seeds"]).any():
                return True
    return False


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
