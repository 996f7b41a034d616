"""ISC metrics: the vectorized `harness.isc.evaluate` against a plain-Python reference."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

DESCRIPTION = (
    "µAP + recall@P90 + recall@rank1/10 on 250k and 2.5M predictions vs a plain-Python reference"
)
TARGET_SPEEDUP = 30.0
FULL_SIZES = (250_000, 2_500_000)
QUICK_SIZES = (25_000, 250_000)


def as_plain_lists(gt, predictions) -> tuple[list[tuple], list[tuple]]:
    """The ground-truth pairs and (query, reference, score) rows as plain Python lists, the input
    of `reference_metrics`."""
    pairs = list(zip(gt.query.tolist(), gt.reference.tolist(), strict=True))
    rows = list(
        zip(
            predictions.query.tolist(),
            predictions.reference.tolist(),
            predictions.score.tolist(),
            strict=True,
        )
    )
    return pairs, rows


def reference_metrics(
    gt_pairs: list[tuple[str, str]], rows: list[tuple[str, str, float]]
) -> dict[str, float | None]:
    """The ISC 2021 definitions written out plainly: a Python sort with the pessimistic tie key,
    a walk over every cutoff, and per-pair ranks from a dict of each query's predictions.
    Predictions for queries absent from the ground truth are simply negatives here."""
    truth = set(gt_pairs)
    n_gt = len(truth)
    seen = set()
    for q, r, _ in rows:
        if (q, r) in seen:
            raise ValueError(f"duplicate prediction {q},{r}")
        seen.add((q, r))
    labelled = [(s, (q, r) in truth) for q, r, s in rows]
    # Descending score; among equal scores negatives first (key `not positive` descending).
    labelled.sort(key=lambda item: (item[0], not item[1]), reverse=True)
    true_positives, terms = 0, []
    best_recall, best_threshold = None, None
    for i, (score, positive) in enumerate(labelled, start=1):
        previous_recall = true_positives / n_gt
        true_positives += positive
        recall, precision = true_positives / n_gt, true_positives / i
        terms.append((recall - previous_recall) * precision)
        if precision >= 0.9 and (best_recall is None or recall > best_recall):
            best_recall, best_threshold = recall, score

    by_query = defaultdict(list)
    for q, r, s in rows:
        by_query[q].append((r, s))
    found_at_1 = found_at_10 = 0
    for q, r in gt_pairs:
        candidates = by_query.get(q, [])
        true_scores = [s for rr, s in candidates if rr == r]
        if not true_scores:
            continue
        rank = sum(1 for _, s in candidates if s >= true_scores[0]) - 1
        found_at_1 += rank < 1
        found_at_10 += rank < 10
    return {
        "average_precision": math.fsum(terms),
        "recall_at_p90": best_recall,
        "threshold_at_p90": best_threshold,
        "recall_at_rank1": found_at_1 / n_gt,
        "recall_at_rank10": found_at_10 / n_gt,
    }


def synthetic_case(n_predictions: int, seed: int = 0):
    """A DISC21-shaped case: 10 predictions per query on average, 20% of queries with a copy,
    ids like the dataset's, scores rounded so that ties (within and across queries) occur."""
    from harness.isc import GroundTruth, Predictions

    rng = np.random.default_rng(seed)
    n_queries = max(10, n_predictions // 10)
    n_references = max(100, 20 * n_queries)
    query_ids = np.char.add("Q", np.char.zfill(np.arange(n_queries).astype(str), 6))
    reference_ids = np.char.add("R", np.char.zfill(np.arange(n_references).astype(str), 7))
    with_copy = rng.choice(n_queries, n_queries // 5, replace=False)
    true_reference = rng.choice(n_references, len(with_copy), replace=False)
    gt = GroundTruth(
        queries=query_ids, query=query_ids[with_copy], reference=reference_ids[true_reference]
    )

    # 70% of true pairs are predicted, with higher scores on average; the rest is noise.
    predicted = rng.random(len(with_copy)) < 0.7
    hit_q, hit_r = with_copy[predicted], true_reference[predicted]
    n_noise = n_predictions - len(hit_q)
    noise_q = rng.integers(0, n_queries, n_noise)
    noise_r = rng.integers(0, n_references, n_noise)
    q = np.concatenate([hit_q, noise_q])
    r = np.concatenate([hit_r, noise_r])
    # Drop accidental duplicate pairs (noise hitting a true pair or itself), keep the first.
    _, first = np.unique(q.astype(np.int64) * n_references + r, return_index=True)
    first.sort()
    q, r = q[first], r[first]
    score = rng.normal(0, 1, len(q))
    score[: len(hit_q)] += 2.0
    score = np.round(score, 3)
    order = rng.permutation(len(q))
    predictions = Predictions(
        query=query_ids[q[order]], reference=reference_ids[r[order]], score=score[order]
    )
    return gt, predictions


def run(quick: bool) -> list[dict]:
    from tqdm import tqdm

    from harness.benchmarks import timed
    from harness.isc import evaluate

    rows = []
    sizes = QUICK_SIZES if quick else FULL_SIZES
    for n in tqdm(sizes, desc="bench metrics", leave=False):
        gt, predictions = synthetic_case(n)
        gt_pairs, plain_rows = as_plain_lists(gt, predictions)
        fast, fast_seconds = timed(
            lambda gt=gt, predictions=predictions: evaluate(gt, predictions).to_dict(), repeat=3
        )
        slow, slow_seconds = timed(
            lambda gt_pairs=gt_pairs, plain_rows=plain_rows: reference_metrics(gt_pairs, plain_rows)
        )
        identical = all(fast[key] == value for key, value in slow.items())
        rows.append(
            {
                "benchmark": "metrics",
                "case": f"{len(predictions):,} predictions, {gt.n_gt:,} gt pairs",
                "n_predictions": len(predictions),
                "seconds": fast_seconds,
                "reference_seconds": slow_seconds,
                "speedup": slow_seconds / fast_seconds,
                "target": f">= {TARGET_SPEEDUP:g}x at 2.5M",
                "identical": identical,
                "average_precision": fast["average_precision"],
            }
        )
    return rows
