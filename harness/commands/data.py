"""`python -m harness data synth|check`: generate the mini-DISC benchmark, or check a benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "data"
HELP = "generate the mini-DISC benchmark (synth) or check a benchmark directory (check)"
DESCRIPTION = """\
Benchmark data.

  data synth [--out DIR]   generate a mini-DISC: procedural reference and training images, and
                           queries that are AugLy-edited copies of references (or distractors edited
                           from images in neither set), with ground_truth.csv and metadata.csv.
                           The same parameters and seed give byte-identical files. Without --out,
                           it goes to the cache that `run --data synthetic` uses
                           ($ISC_BENCH_CACHE or ~/.cache/isc-bench).
  data check PATH          read a benchmark directory, check every image header and the ground
                           truth, and print its summary as JSON. A run opens no image when it
                           starts (it meets a bad one when it decodes it): check once after a
                           download.

A benchmark directory holds references/, queries/, training/ (images named <id>.jpg|png),
ground_truth.csv (query_id,reference_id; empty reference_id = distractor) and optionally
metadata.csv. DISC21 as downloaded is also read: references/ dev_queries/ train/
dev_ground_truth.csv, or the isc2021 scripts' images/{references,queries,train}/ with
list_files/dev_ground_truth.csv.
"""


# The generator's numeric options: (SynthParams field, type, help); defaults come from SynthParams.
SYNTH_OPTIONS = (
    ("references", int, "reference images"),
    ("training", int, "training images"),
    ("queries", int, "query images"),
    ("distractor_fraction", float, "fraction of queries with no match (ours; DISC21 dev: 0.8)"),
    ("size", int, "image side in pixels"),
    ("seed", int, "seed; fixes every file"),
    ("edit_strength", float, "how hard copy edits are: 0 mild, 1 default, >1 harder"),
    ("min_edits", int, "fewest edit families per query"),
    ("max_edits", int, "most edit families per query"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.data.synth import SynthParams

    defaults = SynthParams()  # one source of truth for the generator's defaults

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser(
        "synth",
        help="generate a mini-DISC benchmark",
        description="Generate a mini-DISC benchmark deterministically from --seed.",
    )
    synth.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the cache `run --data synthetic` uses)",
    )
    for name, kind, text in SYNTH_OPTIONS:
        synth.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=getattr(defaults, name),
            help=f"{text} (default: %(default)s)",
        )
    synth.add_argument(
        "--edit-families",
        default=",".join(defaults.edit_families),
        help="comma-separated edit families to draw from (default: all: %(default)s)",
    )
    synth.add_argument(
        "--workers", type=int, default=None, help="processes (default: all available cores)"
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (only once complete)"
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")

    check = sub.add_parser(
        "check",
        help="check a benchmark directory and print its summary",
        description="Read a benchmark, check its images and ground truth, print a JSON summary.",
    )
    check.add_argument("path", type=Path, help="benchmark directory")
    check.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip undecodable or empty image files (listed in the summary) instead of failing",
    )
    check.add_argument(
        "--no-image-check", action="store_true", help="list files only, do not open images"
    )


def synth_params_from_args(args: argparse.Namespace):
    from harness.data.synth import SynthParams

    families = tuple(f.strip() for f in args.edit_families.split(",") if f.strip())
    options = {name: getattr(args, name) for name, _, _ in SYNTH_OPTIONS}
    return SynthParams(**options, edit_families=families)


def main(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from harness.data.synth import ensure_synthetic, synthesize

        params = synth_params_from_args(args)
        progress = not args.no_progress
        if args.out is None:
            path = ensure_synthetic(params, progress=progress, workers=args.workers)
        else:
            path = synthesize(
                args.out, params, overwrite=args.overwrite, workers=args.workers, progress=progress
            )
        print(path)
        return 0

    from harness.data.layout import load_benchmark

    bench = load_benchmark(
        args.path,
        skip_bad_images=args.skip_bad_images,
        check_images=not args.no_image_check,
        progress=True,
    )
    summary = bench.summary()
    summary["skipped"] = [{"path": str(p), "reason": r} for p, r in bench.skipped]
    summary["has_metadata"] = bench.metadata is not None
    print(json.dumps(summary, indent=2))
    return 0
