"""`python -m harness score`: the ISC 2021 metrics of a predictions CSV or of descriptor files."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "score"
HELP = "ISC 2021 metrics (µAP, recall@P90, recall@rank1/10) of predictions or descriptors"
DESCRIPTION = """\
Score a matching-track predictions file or descriptor files against a ground-truth CSV with the
official ISC 2021 (DISC21) definitions: micro AP over one global list sorted by score (ties: negatives
first, no interpolation), recall at precision 0.9 and its score threshold, recall at rank 1 and 10.

Matching track:
  python -m harness score --gt ground_truth.csv --predictions predictions.csv

Descriptor track (exact faiss search, global cap of 10 x n_queries candidates unless --max-results
or --knn; score = -squared L2 distance):
  python -m harness score --gt ground_truth.csv --queries query.h5 --references reference.h5
  python -m harness score --gt gt.csv --queries q.h5 --references r.h5 --training t.h5 --score-norm isc2021

Files: ground truth `query_id,reference_id` (an empty reference_id marks a distractor query);
predictions `query_id,reference_id,score` (higher = more similar; header optional); descriptors in the
submission HDF5 layout (float32 datasets `query` / `reference` / `training` with `<split>_ids`).

Predictions for queries that are absent from the ground truth count as false positives (the isc2021
behaviour); --restrict-to-gt-queries drops them instead. Bad input (malformed lines, unknown columns,
non-numeric or NaN scores, duplicate pairs, NaN/inf descriptors, more than --max-dim dimensions,
mismatched dimensions, non-string ids, an empty file) is an error that names the file and line or
dataset; nothing is silently dropped. Ids are compared without surrounding whitespace, in every file.

When no query id (or no reference id) of the predictions or descriptors is in the ground truth
(ids with `.jpg`, queries and references swapped, files of another benchmark), every metric would be
0: that is an error unless --allow-disjoint-ids says it is intended. Query ids absent from the ground
truth, and ground-truth pairs without descriptors, are counted in a warning on stderr.

No output (--write-predictions, --pr-curve) may name an input file: that is refused before anything
is read.
"""

METRIC_LABELS = {
    "average_precision": "µAP",
    "recall_at_p90": "recall@P90",
    "threshold_at_p90": "threshold@P90",
    "recall_at_rank1": "recall@rank1",
    "recall_at_rank10": "recall@rank10",
    "n_predictions": "predictions",
    "n_gt": "ground-truth pairs",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="GT.csv", help="ground-truth CSV")
    source = parser.add_argument_group("what to score (one of)")
    source.add_argument("--predictions", metavar="P.csv", help="matching-track predictions CSV")
    source.add_argument(
        "--queries",
        metavar="Q.h5",
        help="query descriptors (split `query` if the file has it, else its only split)",
    )
    source.add_argument(
        "--references",
        metavar="R.h5",
        help="reference descriptors (split `reference` if the file has it, else its only split)",
    )
    descriptors = parser.add_argument_group("descriptor track")
    cap = descriptors.add_mutually_exclusive_group()
    cap.add_argument(
        "--max-results",
        type=int,
        metavar="N",
        help="global candidate cap over all queries (default: 10 x number of queries, the ISC rule)",
    )
    cap.add_argument(
        "--knn",
        type=int,
        metavar="K",
        help="keep the K nearest references per query instead of the global cap (not the ISC rule)",
    )
    descriptors.add_argument(
        "--metric",
        choices=("l2", "ip"),
        default="l2",
        help="l2: score = -squared distance (ISC); ip: inner product (default: l2)",
    )
    descriptors.add_argument(
        "--max-dim",
        type=int,
        default=256,
        help="largest descriptor dimension accepted (default: 256, the ISC limit)",
    )
    descriptors.add_argument(
        "--training",
        metavar="T.h5",
        help="training-set descriptors, needed by --score-norm, --pca-whiten and "
        "--subtract-negatives",
    )
    descriptors.add_argument(
        "--score-norm",
        choices=("isc2021", "sscd"),
        help="score normalization with training descriptors: isc2021 (beta 2, 10th neighbour) or "
        "sscd (beta 1, mean of the top 3); applied before the global cap, as isc2021 does",
    )
    descriptors.add_argument("--score-norm-beta", type=float, metavar="B", help="override beta")
    descriptors.add_argument(
        "--score-norm-n", type=int, metavar="N", help="override the neighbour count n"
    )
    descriptors.add_argument(
        "--pca-whiten",
        type=int,
        metavar="DIM",
        help="PCA-whiten to DIM dimensions (0: keep the dimension), fitted on --training, then "
        "L2-normalize; applied first",
    )
    descriptors.add_argument(
        "--subtract-negatives",
        action="store_true",
        help="negative-embedding subtraction (ISC 2021 winner): x <- normalize(x - alpha * mean "
        "of its k nearest --training descriptors), queries and references",
    )
    descriptors.add_argument(
        "--negatives-alpha", type=float, default=0.35, metavar="A", help="alpha (default: 0.35)"
    )
    descriptors.add_argument(
        "--negatives-k", type=int, default=10, metavar="K", help="k (default: 10)"
    )
    descriptors.add_argument(
        "--write-predictions", metavar="P.csv", help="also write the descriptor-track predictions"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--restrict-to-gt-queries",
        action="store_true",
        help="drop predictions for queries absent from the ground truth (default: they count as "
        "false positives, as in isc2021)",
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object (null where undefined) instead of the table",
    )
    output.add_argument("--pr-curve", metavar="FILE.png", help="draw the precision-recall curve")
    output.add_argument(
        "--allow-disjoint-ids",
        action="store_true",
        help="score even when no query (or reference) id is in the ground truth (all metrics 0)",
    )


def _format_value(key: str, value) -> str:
    if value is None:
        return "n/a (precision 0.9 never reached)" if "p90" in key else "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}" if key == "threshold_at_p90" else f"{value:.4f}"


def format_table(metrics: dict) -> str:
    width = max(len(label) for label in METRIC_LABELS.values())
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    for key, label in METRIC_LABELS.items():
        lines.append(f"{label:<{width}}  {_format_value(key, metrics[key])}")
    return "\n".join(lines)


# Numeric options and their smallest valid value.
_AT_LEAST = {
    "max_results": 1,
    "knn": 1,
    "max_dim": 1,
    "pca_whiten": 0,
    "score_norm_n": 1,
    "negatives_k": 1,
}
_FINITE = ("score_norm_beta", "negatives_alpha")


def _check_option_values(args) -> None:
    """Refuse out-of-range numbers before they reach faiss (which would assert or abort)."""
    import math

    from harness.errors import ConfigError

    for name, least in _AT_LEAST.items():
        value = getattr(args, name)
        if value is not None and value < least:
            note = " (0 keeps the dimension)" if name == "pca_whiten" else ""
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {least}{note}, got {value}")
    for name in _FINITE:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def _check_files(args) -> None:
    from harness.file_checks import refuse_overwriting_inputs

    refuse_overwriting_inputs(
        {"--write-predictions": args.write_predictions, "--pr-curve": args.pr_curve},
        {
            "--gt": args.gt,
            "--predictions": args.predictions,
            "--queries": args.queries,
            "--references": args.references,
            "--training": args.training,
        },
    )


def _check_id_overlap(args, gt, ids) -> None:
    """Refuse ids that never meet the ground truth's (unless allowed); warn about partial overlap."""
    from harness.errors import InputError
    from harness.isc.id_overlap import disjoint_ids, partial_overlap

    problem = disjoint_ids(gt, ids, args.gt)
    if problem is not None and not args.allow_disjoint_ids:
        raise InputError(f"{problem} (pass --allow-disjoint-ids if this is intended)")
    warnings = (
        [problem]
        if problem is not None
        else partial_overlap(gt, ids, args.gt, restrict_to_gt_queries=args.restrict_to_gt_queries)
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _score_norm_options(args):
    from dataclasses import replace

    from harness.errors import ConfigError
    from harness.isc import ScoreNormalization

    if args.score_norm is None:
        if args.score_norm_beta is not None or args.score_norm_n is not None:
            raise ConfigError("--score-norm-beta/--score-norm-n need --score-norm")
        return None
    options = ScoreNormalization.named(args.score_norm)
    if args.score_norm_beta is not None:
        options = replace(options, beta=args.score_norm_beta)
    if args.score_norm_n is not None:
        options = replace(options, n=args.score_norm_n)
    return options


def _read_split(path: str, preferred: str, max_dim: int):
    from harness.isc.io import descriptor_splits, read_descriptors

    split = preferred if preferred in descriptor_splits(path) else None
    return read_descriptors(path, split, max_dim=max_dim)


def draw_pr_curve(path: str, precision, recall, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.atomic import atomic_path

    figure, axes = plt.subplots(figsize=(5, 4))
    axes.plot(recall, precision, linewidth=1.2)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> int:
    from harness.errors import ConfigError, InputError
    from harness.file_checks import writing_output
    from harness.isc import (
        NegativeEmbedding,
        evaluate,
        evaluate_descriptors,
        precision_recall_curve,
        prepare_descriptors,
        read_ground_truth,
        read_predictions,
        write_predictions,
    )
    from harness.isc.id_overlap import ScoredIds

    descriptor_mode = args.queries is not None or args.references is not None
    if args.predictions and descriptor_mode:
        raise ConfigError("give either --predictions or --queries/--references, not both")
    if not args.predictions and not descriptor_mode:
        raise ConfigError("nothing to score: give --predictions, or --queries and --references")
    if descriptor_mode and (args.queries is None or args.references is None):
        raise ConfigError("the descriptor track needs both --queries and --references")
    if args.predictions and (
        args.knn
        or args.max_results
        or args.training
        or args.score_norm
        or args.pca_whiten is not None
        or args.subtract_negatives
        or args.write_predictions
    ):
        raise ConfigError(
            "--knn, --max-results, --training, --score-norm, --pca-whiten, "
            "--subtract-negatives and --write-predictions apply to descriptors only"
        )
    _check_option_values(args)
    _check_files(args)

    gt = read_ground_truth(args.gt)
    if args.predictions:
        predictions = read_predictions(args.predictions)
        _check_id_overlap(
            args,
            gt,
            ScoredIds(
                predictions.query, predictions.reference, args.predictions, args.predictions, False
            ),
        )
        metrics = evaluate(gt, predictions, restrict_to_gt_queries=args.restrict_to_gt_queries)
    else:
        score_norm = _score_norm_options(args)
        needs_training = [
            flag
            for flag, used in (
                ("--score-norm", score_norm is not None),
                ("--pca-whiten", args.pca_whiten is not None),
                ("--subtract-negatives", args.subtract_negatives),
            )
            if used
        ]
        if needs_training and args.training is None:
            raise ConfigError(f"{' and '.join(needs_training)} need(s) --training descriptors")
        if score_norm is not None and args.subtract_negatives:
            raise ConfigError(
                "--score-norm and --subtract-negatives are alternatives (both use the training "
                "set's neighbours); pick one"
            )
        queries = _read_split(args.queries, "query", args.max_dim)
        references = _read_split(args.references, "reference", args.max_dim)
        training = _read_split(args.training, "training", args.max_dim) if args.training else None
        for path, other in ((args.references, references), (args.training, training)):
            if other is not None and other.dim != queries.dim:
                raise InputError(
                    f"descriptor dimensions differ: {args.queries} has {queries.dim}, {path} "
                    f"has {other.dim}"
                )
        _check_id_overlap(
            args, gt, ScoredIds(queries.ids, references.ids, args.queries, args.references, True)
        )
        queries, references, training = prepare_descriptors(
            queries,
            references,
            training,
            pca_dim=args.pca_whiten,
            negatives=NegativeEmbedding(args.negatives_alpha, args.negatives_k)
            if args.subtract_negatives
            else None,
        )
        predictions, metrics = evaluate_descriptors(
            gt,
            queries,
            references,
            training,
            score_norm=score_norm,
            max_results=args.max_results,
            knn=args.knn,
            metric=args.metric,
            restrict_to_gt_queries=args.restrict_to_gt_queries,
            progress=not args.json and sys.stderr.isatty(),
        )
        if args.write_predictions:
            with writing_output("--write-predictions", args.write_predictions):
                write_predictions(args.write_predictions, predictions)

    result = metrics.to_dict()
    if args.pr_curve:
        precision, recall, _ = precision_recall_curve(
            gt, predictions, restrict_to_gt_queries=args.restrict_to_gt_queries
        )
        ap = result["average_precision"]
        title = f"µAP = {ap:.4f}" if ap is not None else "µAP undefined"
        with writing_output("--pr-curve", args.pr_curve):
            draw_pr_curve(args.pr_curve, precision, recall, title)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0
