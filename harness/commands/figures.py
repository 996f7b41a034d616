"""`python -m harness figures NAME`: the report and the comparison summary of one sweep."""

from __future__ import annotations

import argparse
import sys

NAME = "figures"
HELP = "figure set and Markdown summary of a sweep (e.g. `figures paper`)"
DESCRIPTION = """\
Run the report over a sweep's directory (results/sweeps/NAME by default) and write, next to its
tables and figures, summary.md: the equal-budget comparison (mean ± std over seeds), QK iteration
minus each baseline with the standard error of the difference (stated whichever way it comes out),
the negatives-per-step sweeps, and the QK paper's own numbers (0.3403 vs 0.2001 on DISC21 phase 1,
which is not this benchmark) for orientation.

The equal-budget runs come from the sweep file's products in which no key but method and seed takes
several values (the first product of configs/sweeps/paper.yaml); a product with a key taking several
values (qk.num_negatives: [64, 256, 1024]) is a sweep of that key.

Example:
  python -m harness sweep configs/sweeps/paper.yaml
  python -m harness figures paper
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="sweep name, e.g. paper (its directory: results/sweeps/NAME)")
    parser.add_argument(
        "--sweep-dir", default=None, help="the sweep's directory (default: results/sweeps/NAME)"
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: <sweep directory>/report)"
    )


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.paths import child_path
    from harness.report.paper import build_paper_report

    sweep_dir = (
        Path(args.sweep_dir)
        if args.sweep_dir
        else child_path(Path("results") / "sweeps", args.name, "sweep name")
    )
    out = Path(args.out) if args.out else sweep_dir / "report"
    built, summary = build_paper_report(sweep_dir, out, sweep_name=args.name)
    print(summary)
    for skipped in built.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    for note in built.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {len(built.written)} files to {out}", file=sys.stderr)
    return 0
