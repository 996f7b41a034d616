"""The ISC 2021 metrics (micro AP, recall at precision 90, recall at rank 1/10), vectorized.

Definitions follow facebookresearch/isc2021 `isc/metrics.py` (see /work/shared/README.md §1):
all predictions form one global list sorted by score, descending; among equal scores negatives
come before positives (pessimistic, so a constant score cannot game the metric); there is no
interpolation. Predictions for queries absent from the ground truth count as false positives,
as in isc2021; `restrict_to_gt_queries=True` drops them instead (our option).

Nothing here loops or sorts in Python over predictions. The key observation: precision only needs
evaluating at the positives. The k-th positive (by descending score) sits at position
`k + #negatives with score >= its score` of the pessimistic order, so a sort of the negatives'
scores and a `searchsorted` give every cutoff that matters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from harness.errors import InputError
from harness.isc.codes import factorize
from harness.isc.types import GroundTruth, Predictions

REQUIRED_PRECISION = 0.9
NOT_FOUND = np.iinfo(np.int64).max


@dataclass
class Metrics:
    average_precision: float | None
    recall_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float | None
    recall_at_rank10: float | None
    n_predictions: int
    n_gt: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelledPredictions:
    """Predictions reduced to what the metrics need: plain arrays, one entry per prediction."""

    score: np.ndarray  # float64
    is_positive: np.ndarray  # bool: the (query, reference) pair is in the ground truth
    query_code: np.ndarray  # int64, equal for equal query ids
    n_gt: int


def label_predictions(
    gt: GroundTruth, predictions: Predictions, *, restrict_to_gt_queries: bool = False
) -> LabelledPredictions:
    """Mark each prediction positive iff its exact (query, reference) pair is in the ground truth.

    Raises InputError on duplicate (query, reference) pairs or non-finite scores."""
    import pandas as pd

    score = np.asarray(predictions.score, dtype=np.float64)
    if not np.isfinite(score).all():
        row = int(np.flatnonzero(~np.isfinite(score))[0])
        raise InputError(f"predictions: score at row {row} is {score[row]}; scores must be finite")
    (gt_queries, gt_query, pred_query), n_queries = factorize(
        gt.queries, gt.query, predictions.query
    )
    (gt_reference, pred_reference), n_references = factorize(gt.reference, predictions.reference)

    pred_pairs = pred_query * n_references + pred_reference
    gt_pairs = gt_query * n_references + gt_reference
    sorted_pairs = np.sort(pred_pairs)
    repeated = np.flatnonzero(sorted_pairs[1:] == sorted_pairs[:-1])
    if len(repeated):
        row = int(np.flatnonzero(pred_pairs == sorted_pairs[repeated[0]])[1])
        raise InputError(
            f"predictions: duplicate (query, reference) pair "
            f"{predictions.query[row]},{predictions.reference[row]}"
        )
    if restrict_to_gt_queries:
        listed = np.zeros(n_queries, dtype=bool)
        listed[gt_queries] = True
        listed[gt_query] = True
        keep = listed[pred_query]
        score, pred_query, pred_pairs = score[keep], pred_query[keep], pred_pairs[keep]
    if len(np.unique(gt_pairs)) != len(gt_pairs):
        raise InputError("ground truth: duplicate (query, reference) pairs")
    is_positive = pd.Index(gt_pairs).get_indexer(pred_pairs) >= 0
    return LabelledPredictions(
        score=score, is_positive=is_positive, query_code=pred_query, n_gt=gt.n_gt
    )


def _positive_cutoffs(
    score: np.ndarray, is_positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the positives in pessimistic order: their scores, true-positive counts and cutoffs.

    Returns (positive_scores descending, tp = 1..m, position i of each in the global order)."""
    positive_scores = -np.sort(-score[is_positive])
    negative_scores = np.sort(score[~is_positive])
    negatives_at_or_above = len(negative_scores) - np.searchsorted(
        negative_scores, positive_scores, side="left"
    )
    true_positives = np.arange(1, len(positive_scores) + 1)
    return positive_scores, true_positives, true_positives + negatives_at_or_above


def average_precision(score: np.ndarray, is_positive: np.ndarray, n_gt: int) -> float | None:
    """Micro AP: sum over cutoffs of (R_i - R_{i-1}) * P_i; only positives change R."""
    if n_gt == 0:
        return None
    _, tp, cutoff = _positive_cutoffs(score, is_positive)
    # Recall steps written as isc2021 computes them (a difference of ratios), for identical sums.
    recall_step = tp / n_gt - (tp - 1) / n_gt
    return float(np.sum(recall_step * (tp / cutoff)))


def recall_at_precision(
    score: np.ndarray,
    is_positive: np.ndarray,
    n_gt: int,
    required_precision: float = REQUIRED_PRECISION,
) -> tuple[float | None, float | None]:
    """The highest recall among cutoffs with precision >= required, and that cutoff's score.

    (None, None) when no cutoff reaches the precision. The best cutoff is always at a positive:
    a negative cutoff has the recall of the positive before it and a lower precision."""
    if n_gt == 0:
        return None, None
    positive_scores, tp, cutoff = _positive_cutoffs(score, is_positive)
    valid = np.flatnonzero(tp / cutoff >= required_precision)
    if len(valid) == 0:
        return None, None
    best = valid[-1]
    return float(tp[best] / n_gt), float(positive_scores[best])


def true_pair_ranks(
    score: np.ndarray, is_positive: np.ndarray, query_code: np.ndarray
) -> np.ndarray:
    """For each positive prediction: (number of its query's predictions scoring >= it) - 1."""
    if not is_positive.any():
        return np.zeros(0, dtype=np.int64)
    # Only queries with a positive matter; their predictions get one int64 key
    # (query, rank of score) so one integer sort groups by query and orders by score.
    has_positive = np.zeros(int(query_code.max()) + 1, dtype=bool)
    has_positive[query_code[is_positive]] = True
    keep = has_positive[query_code]
    score, is_positive, query_code = score[keep], is_positive[keep], query_code[keep]
    n = len(score)
    score_rank = np.searchsorted(np.sort(score), score, side="left")  # equal scores, equal rank
    keys = np.sort(query_code * n + score_rank)
    positive_query = query_code[is_positive]
    start = np.searchsorted(keys, positive_query * n + score_rank[is_positive], side="left")
    end = np.searchsorted(keys, (positive_query + 1) * n, side="left")
    return end - start - 1


def recall_at_ranks(
    score: np.ndarray, is_positive: np.ndarray, query_code: np.ndarray, n_gt: int, ranks=(1, 10)
) -> list[float | None]:
    """Fraction of ground-truth pairs found within the top r of their query's predictions."""
    if n_gt == 0:
        return [None for _ in ranks]
    found = true_pair_ranks(score, is_positive, query_code)
    return [float((found < r).sum() / n_gt) for r in ranks]


def evaluate(
    gt: GroundTruth, predictions: Predictions, *, restrict_to_gt_queries: bool = False
) -> Metrics:
    """All ISC 2021 metrics of `predictions` against `gt` (None where undefined)."""
    labelled = label_predictions(gt, predictions, restrict_to_gt_queries=restrict_to_gt_queries)
    ap = average_precision(labelled.score, labelled.is_positive, labelled.n_gt)
    recall_p90, threshold_p90 = recall_at_precision(
        labelled.score, labelled.is_positive, labelled.n_gt
    )
    rank1, rank10 = recall_at_ranks(
        labelled.score, labelled.is_positive, labelled.query_code, labelled.n_gt
    )
    return Metrics(
        average_precision=ap,
        recall_at_p90=recall_p90,
        threshold_at_p90=threshold_p90,
        recall_at_rank1=rank1,
        recall_at_rank10=rank10,
        n_predictions=len(labelled.score),
        n_gt=labelled.n_gt,
    )


def precision_recall_curve(
    gt: GroundTruth, predictions: Predictions, *, restrict_to_gt_queries: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every cutoff of the pessimistic order, and the cutoffs' scores
    (ordered by increasing recall, as isc2021 returns them)."""
    labelled = label_predictions(gt, predictions, restrict_to_gt_queries=restrict_to_gt_queries)
    # Negatives first, then a stable sort by descending score keeps them ahead of tied positives.
    tie_order = np.argsort(labelled.is_positive, kind="stable")
    order = tie_order[np.argsort(-labelled.score[tie_order], kind="stable")]
    true_positives = np.cumsum(labelled.is_positive[order])
    precision = true_positives / np.arange(1, len(order) + 1)
    recall = true_positives / labelled.n_gt if labelled.n_gt else np.zeros(len(order))
    return precision, recall, labelled.score[order]
