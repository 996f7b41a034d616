"""The ISC 2021 metrics (micro AP, recall at precision 90, recall at rank 1/10), vectorized.

Definitions follow facebookresearch/isc2021 `isc/metrics.py` (see docs/evaluation.md):
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

import math
from dataclasses import asdict, dataclass

import numpy as np

from harness.errors import InputError
from harness.isc.codes import first_repeated_pair, id_keys, lookup
from harness.isc.types import GroundTruth, Predictions

REQUIRED_PRECISION = 0.9


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
    # int64 code of the query among the ground truth's matched queries, -1 for any other query
    # (those can hold no positive, so they never matter for ranks)
    query_code: np.ndarray
    n_gt: int


def label_predictions(
    gt: GroundTruth, predictions: Predictions, *, restrict_to_gt_queries: bool = False
) -> LabelledPredictions:
    """Mark each prediction positive iff its exact (query, reference) pair is in the ground truth.

    Raises InputError on duplicate (query, reference) pairs or non-finite scores."""
    score = np.asarray(predictions.score, dtype=np.float64)
    if not np.isfinite(score).all():
        row = int(np.flatnonzero(~np.isfinite(score))[0])
        raise InputError(f"predictions: score at row {row} is {score[row]}; scores must be finite")
    gt_queries, gt_query, gt_reference, query, reference = id_keys(
        gt.queries, gt.query, gt.reference, predictions.query, predictions.reference
    )
    repeat = first_repeated_pair(query, reference)
    if repeat is not None:
        row = repeat[1]
        raise InputError(
            f"predictions: duplicate (query, reference) pair "
            f"{predictions.query[row]},{predictions.reference[row]} (rows {repeat[0]} and {row})"
        )
    if first_repeated_pair(gt_query, gt_reference) is not None:
        raise InputError("ground truth: duplicate (query, reference) pairs")
    if restrict_to_gt_queries:
        _, keep = lookup(query, np.unique(np.concatenate([gt_queries, gt_query])))
        score, query, reference = score[keep], query[keep], reference[keep]

    # Dense codes over the ground truth's own queries and references; a prediction can only be
    # positive if both its ids appear there.
    gt_query_ids, gt_reference_ids = np.unique(gt_query), np.unique(gt_reference)
    query_index, query_known = lookup(query, gt_query_ids)
    candidate = np.flatnonzero(query_known)  # only these can be positive
    reference_index, reference_known = lookup(reference[candidate], gt_reference_ids)
    candidate, reference_index = candidate[reference_known], reference_index[reference_known]
    n_references = len(gt_reference_ids)
    gt_pairs = (
        lookup(gt_query, gt_query_ids)[0] * n_references + lookup(gt_reference, gt_reference_ids)[0]
    )
    is_positive = np.zeros(len(score), dtype=bool)
    candidate_pairs = query_index[candidate] * n_references + reference_index
    is_positive[candidate] = lookup(candidate_pairs, gt_pairs)[1]
    query_code = np.where(query_known, query_index, -1)
    return LabelledPredictions(
        score=score, is_positive=is_positive, query_code=query_code, n_gt=gt.n_gt
    )


@dataclass
class PositiveCutoffs:
    """The cutoffs that matter: one per positive, in the pessimistic order."""

    score: np.ndarray  # the positives' scores, descending
    true_positives: np.ndarray  # 1..m
    position: np.ndarray  # 1-based position in the global order (= the cutoff's size)


def positive_cutoffs(score: np.ndarray, is_positive: np.ndarray) -> PositiveCutoffs:
    """The k-th positive sits after every negative scoring >= it (ties: negatives first)."""
    positive_scores = -np.sort(-score[is_positive])
    negative_scores = np.sort(score[~is_positive])
    negatives_at_or_above = len(negative_scores) - np.searchsorted(
        negative_scores, positive_scores, side="left"
    )
    true_positives = np.arange(1, len(positive_scores) + 1)
    return PositiveCutoffs(positive_scores, true_positives, true_positives + negatives_at_or_above)


def average_precision_at(cutoffs: PositiveCutoffs, n_gt: int) -> float | None:
    """Micro AP: sum over cutoffs of (R_i - R_{i-1}) * P_i; only positives change R."""
    if n_gt == 0:
        return None
    tp = cutoffs.true_positives
    # Recall steps written as isc2021 computes them (a difference of ratios); negatives add
    # exactly 0. fsum makes the total independent of summation order (exactly rounded).
    recall_step = tp / n_gt - (tp - 1) / n_gt
    return math.fsum((recall_step * (tp / cutoffs.position)).tolist())


def recall_at_precision_at(
    cutoffs: PositiveCutoffs, n_gt: int, required_precision: float = REQUIRED_PRECISION
) -> tuple[float | None, float | None]:
    """The highest recall among cutoffs with precision >= required, and that cutoff's score.

    (None, None) when no cutoff reaches the precision. The best cutoff is always at a positive:
    a negative cutoff has the recall of the positive before it and a lower precision."""
    if n_gt == 0:
        return None, None
    tp = cutoffs.true_positives
    valid = np.flatnonzero(tp / cutoffs.position >= required_precision)
    if len(valid) == 0:
        return None, None
    best = valid[-1]
    return float(tp[best] / n_gt), float(cutoffs.score[best])


def true_pair_ranks(
    score: np.ndarray, is_positive: np.ndarray, query_code: np.ndarray
) -> np.ndarray:
    """For each positive prediction: (number of its query's predictions scoring >= it) - 1.

    `query_code`: small non-negative integers equal for equal queries (-1: a query with no
    positive)."""
    if not is_positive.any():
        return np.zeros(0, dtype=np.int64)
    # Only queries with a positive matter; their predictions get one int64 key
    # (query, rank of score) so one integer sort groups by query and orders by score.
    has_positive = np.zeros(int(query_code.max()) + 2, dtype=bool)  # slot -1 stays False
    has_positive[query_code[is_positive]] = True
    keep = has_positive[query_code]
    score, is_positive, query_code = score[keep], is_positive[keep], query_code[keep]
    n = len(score)
    # Rank of each score among all kept scores, equal for equal scores (the first of its ties).
    order = np.argsort(score)
    sorted_scores = score[order]
    tie_start = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    score_rank = np.empty(n, dtype=np.int64)
    score_rank[order] = np.repeat(tie_start, np.diff(np.r_[tie_start, n]))
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
    cutoffs = positive_cutoffs(labelled.score, labelled.is_positive)
    recall_p90, threshold_p90 = recall_at_precision_at(cutoffs, labelled.n_gt)
    rank1, rank10 = recall_at_ranks(
        labelled.score, labelled.is_positive, labelled.query_code, labelled.n_gt
    )
    return Metrics(
        average_precision=average_precision_at(cutoffs, labelled.n_gt),
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
