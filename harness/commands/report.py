"""`python -m harness report`: µAP tables and comparison figures from result records."""

from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "tables (Markdown, CSV, LaTeX) and figures from the record.json files of finished runs"
DESCRIPTION = """\
Load every record.json below the given directories (recursively) into one table, group the runs that
differ only in seed, and write mean ± std tables and figures. The benchmark is told by its resolved
path and content fingerprint (recorded by each run), never by the --data string typed. A group never
mixes protocols: when --group-by leaves out a config key that differs inside a group (a budget, the
backbone, the benchmark), the group is split by it and a note names the key. A cell averaged over
fewer runs than its group holds reads "0.4512 ± 0.0100 (2 of 3)"; NaN and infinite values are left
out and named. Notes go to stderr and report.md.

Written into --out:
  report.md           the tables, the figures and the skipped runs, in one page
  main.{md,csv,tex}   per group: µAP (raw, score-normalized), recall@P90, recall@rank1,
                      negatives/step, budget, wall-clock, peak memory, number of seeds
  edits.{md,csv,tex}  µAP restricted to the queries with each edit family (distractors kept),
                      when the benchmark has a metadata.csv
  runs.csv            one row per run (metrics and the flattened config)
  *.png, *.pdf        µAP by method, PR curves, µAP against negatives/step and against compute,
                      per-edit heatmap

Unfinished runs (a run directory without record.json) and unreadable records are listed and skipped.

Example:
  python -m harness report results/sweeps/paper --out results/sweeps/paper/report
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="*",
        default=["results"],
        metavar="RESULTS_DIR",
        help="directories searched recursively for record.json (default: results)",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: <first RESULTS_DIR>/report)"
    )
    parser.add_argument(
        "--group-by",
        default="method,setting",
        help="comma-separated columns forming a group; runs in a group are averaged over seeds. "
        "`setting` is every config key except seed and run_id; any config key works, e.g. "
        "method,qk.num_negatives (default: method,setting)",
    )
    parser.add_argument(
        "--format",
        default="md,csv,tex",
        help="comma-separated table formats among md, csv, tex (default: all three)",
    )
    parser.add_argument(
        "--ignore-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a config key that does not define a setting (besides seed and run_id), e.g. "
        "data.workers; repeatable",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument(
        "--no-edits", action="store_true", help="skip the per-edit-type table (reads predictions)"
    )


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.report.build import build_report, parse_list
    from harness.report.records import DEFAULT_IGNORED_KEYS
    from harness.report.tables import to_markdown

    out = Path(args.out) if args.out else Path(args.results[0]) / "report"
    report = build_report(
        args.results,
        out,
        group_by=parse_list(args.group_by),
        formats=parse_list(args.format),
        ignored_keys=[*DEFAULT_IGNORED_KEYS, *parse_list(args.ignore_key)],
        edits=not args.no_edits,
        figures=not args.no_figures,
    )
    print(to_markdown(report.table))
    if len(report.edit_table.columns) > 1:
        print(to_markdown(report.edit_table))
    for skipped in report.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"{len(report.runs)} runs in {len(report.summary)} groups; wrote {len(report.written)} files "
        f"to {out}",
        file=sys.stderr,
    )
    return 0
