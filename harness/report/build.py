"""The whole report of a results directory: load, group, tabulate and draw, and write every file.

built = build_report(["results/"], "results/report")   # report.md, runs.csv, main.md, ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.atomic import atomic_write_text
from harness.errors import ConfigError, InputError
from harness.report.curves import (
    EQUAL_TIME_METRIC,
    EQUAL_TIME_NOTE,
    load_curves,
    with_equal_time_metric,
)
from harness.report.per_edit import EDIT_RUN_COLUMNS, edit_table, per_edit_runs, summarize_edits
from harness.report.records import (
    DEFAULT_IGNORED_KEYS,
    RECORD_METRICS,
    RECORD_NAME,
    SkippedRun,
    load_runs,
)
from harness.report.tables import (
    COUNT_NOTE,
    DEFAULT_GROUP_BY,
    add_group_column,
    main_table,
    protocol_grouping,
    shows_partial_counts,
    summarize,
    to_latex,
    to_markdown,
)

FORMATS = ("md", "csv", "tex")


@dataclass
class Report:
    """Everything a report computed, and the files it wrote."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    table: pd.DataFrame
    edit_summary: pd.DataFrame
    edit_table: pd.DataFrame
    skipped: list[SkippedRun]
    written: list[Path]
    notes: list[str] = field(default_factory=list)


def parse_list(text: str | Sequence[str]) -> list[str]:
    """ "a,b" or ["a", "b,c"] -> ["a", "b", "c"]."""
    items = [text] if isinstance(text, str) else list(text)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _write_table(
    table: pd.DataFrame, numbers: pd.DataFrame, stem: Path, formats, caption
) -> list[Path]:
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "md":
            atomic_write_text(path, to_markdown(table))
        elif fmt == "csv":
            atomic_write_text(path, numbers.to_csv(index=False))
        else:
            atomic_write_text(path, to_latex(table, caption=caption))
        written.append(path)
    return written


def build_report(
    roots: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    formats: Sequence[str] = FORMATS,
    ignored_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    edits: bool = True,
    figures: bool = True,
    comparison: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> Report:
    """Load, group, tabulate and draw: writes `report.md`, `runs.csv`, `main.<fmt>`, `edits.<fmt>`
    and the figure set into `out_dir`. Raises InputError only when no run at all is usable.

    `comparison` marks the runs of the main comparison (a boolean per run); the PR-curve figure then
    draws its groups. By default, per method, the group with the most seeds (ties: the higher mean
    µAP; `harness.figures.representative_runs`)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ConfigError(
            f"--format: unknown {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
        )
    loaded = load_runs(roots, ignored_keys=ignored_keys)
    if loaded.runs.empty:
        reasons = "".join(f"\n  {s.path}: {s.reason}" for s in loaded.skipped)
        where = ", ".join(str(r) for r in roots)
        raise InputError(f"no complete {RECORD_NAME} under {where}{reasons}")
    grouping = protocol_grouping(loaded.runs, group_by, loaded.config_columns)
    group_by = grouping.columns
    runs = add_group_column(loaded.runs, group_by)
    curves = load_curves(runs)
    runs, equal_seconds = with_equal_time_metric(runs, curves)
    summary = summarize(runs, group_by, metrics=[*RECORD_METRICS, EQUAL_TIME_METRIC])
    table = main_table(summary)
    notes = [*loaded.notes, *grouping.notes]
    if equal_seconds is not None:
        notes.append(EQUAL_TIME_NOTE.format(seconds=equal_seconds))
    if shows_partial_counts(summary):
        notes.append(COUNT_NOTE)
    skipped = list(loaded.skipped)
    edit_long = pd.DataFrame(columns=EDIT_RUN_COLUMNS)
    if edits:
        edit_long, edit_skipped = per_edit_runs(runs)
        skipped += edit_skipped
    edit_summary = summarize_edits(runs, edit_long, group_by)
    families = edit_table(edit_summary)

    out_dir = Path(out_dir)
    written = []
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    written.append(out_dir / "runs.csv")
    if not curves.empty:
        atomic_write_text(out_dir / "curves.csv", curves.to_csv(index=False))
        written.append(out_dir / "curves.csv")
    written += _write_table(table, summary, out_dir / "main", formats, "µAP and cost per method")
    if not edit_summary.empty:
        written += _write_table(
            families, edit_summary, out_dir / "edits", formats, "µAP per edit family"
        )
    figure_paths: list[Path] = []
    if figures:
        from harness.figures import write_figures

        pr_groups = None if comparison is None else set(runs.loc[comparison(runs), "group"])
        figure_paths = write_figures(
            runs,
            summary,
            out_dir,
            edit_summary=edit_summary,
            pr_groups=pr_groups,
            curve_points=None if curves.empty else curves,
        )
        written += figure_paths
    markdown = report_markdown(table, families, skipped, figure_paths, out_dir, notes)
    atomic_write_text(out_dir / "report.md", markdown)
    written.append(out_dir / "report.md")
    return Report(runs, summary, table, edit_summary, families, skipped, written, notes)


def report_markdown(
    table: pd.DataFrame,
    families: pd.DataFrame,
    skipped: Sequence[SkippedRun],
    figure_paths: Sequence[Path],
    out_dir: Path,
    notes: Sequence[str] = (),
) -> str:
    """report.md: the main table, its notes, the per-edit table, the figures (PNG links) and the
    skipped runs."""
    parts = [
        "# Results\n",
        "Mean ± sample std over seeds; `seeds` counts the runs in each group.\n",
        to_markdown(table),
    ]
    if notes:
        parts.append("\n## Notes\n")
        parts += [f"- {note}\n" for note in notes]
    if len(families.columns) > 1:
        parts += [
            "\n## µAP per edit family\n",
            "µAP of the queries with each edit family plus every distractor query (raw scores,"
            " predictions.csv), scored by the ISC evaluation; mean ± std over seeds.\n",
            to_markdown(families),
        ]
    pngs = [p for p in figure_paths if p.suffix == ".png"]
    if pngs:
        parts.append("\n## Figures\n")
        parts += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})\n" for p in pngs]
    if skipped:
        parts.append("\n## Skipped\n")
        parts += [f"- `{s.path}`: {s.reason}\n" for s in skipped]
    return "\n".join(parts)
