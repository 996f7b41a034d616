"""ISC 2021 metrics: hand-computed cases and a property test against a literal slow implementation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import METRIC_KEYS
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.isc import GroundTruth, Predictions, evaluate, precision_recall_curve


def gt_of(pairs, distractors=()):
    queries = list(dict.fromkeys([q for q, _ in pairs] + list(distractors)))
    return GroundTruth(
        queries=queries, query=[q for q, _ in pairs], reference=[r for _, r in pairs]
    )


def predictions_of(rows):
    return Predictions(
        query=[q for q, _, _ in rows],
        reference=[r for _, r, _ in rows],
        score=[s for _, _, s in rows],
    )


# ---------------------------------------------------------------------------------------------
# A literal, slow reading of the ISC 2021 definitions (docs/evaluation.md), independent of the
# implementation: Python sort with an explicit tie key, a walk over every cutoff, per-pair ranks.
# ---------------------------------------------------------------------------------------------


def slow_metrics(gt_pairs, rows, restrict_to=None):
    truth = set(gt_pairs)
    if restrict_to is not None:
        rows = [row for row in rows if row[0] in restrict_to]
    n_gt = len(truth)
    # Descending score; at equal score negatives (False) before positives (True).
    ordered = sorted(rows, key=lambda row: (-row[2], (row[0], row[1]) in truth))
    tp, ap, previous_recall = 0, 0.0, 0.0
    best_recall, best_threshold = None, None
    for i, (q, r, s) in enumerate(ordered, start=1):
        tp += (q, r) in truth
        precision = tp / i
        recall = tp / n_gt if n_gt else 0.0
        ap += (recall - previous_recall) * precision
        previous_recall = recall
        if precision >= 0.9 and (best_recall is None or recall > best_recall):
            best_recall, best_threshold = recall, s
    ranks = []
    for q, r in gt_pairs:
        scores = [s for qq, _, s in rows if qq == q]
        mine = [s for qq, rr, s in rows if qq == q and rr == r]
        ranks.append(sum(s >= mine[0] for s in scores) - 1 if mine else None)
    if n_gt == 0:
        return dict(
            average_precision=None,
            recall_at_p90=None,
            threshold_at_p90=None,
            recall_at_rank1=None,
            recall_at_rank10=None,
        )
    return dict(
        average_precision=ap,
        recall_at_p90=best_recall,
        threshold_at_p90=best_threshold,
        recall_at_rank1=sum(r is not None and r == 0 for r in ranks) / n_gt,
        recall_at_rank10=sum(r is not None and r < 10 for r in ranks) / n_gt,
    )


def assert_same(metrics, expected):
    for key, value in expected.items():
        got = metrics[key]
        if value is None:
            assert got is None, key
        else:
            assert got == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_tie_between_positive_and_negatives_is_pessimistic():
    gt = gt_of([("Q1", "R1")])
    # All three share one score: the positive goes last, so P = 1/3 at its cutoff.
    preds = predictions_of([("Q1", "R1", 1.0), ("Q1", "R2", 1.0), ("Q2", "R3", 1.0)])
    m = evaluate(gt, preds).to_dict()
    assert m["average_precision"] == pytest.approx(1 / 3)
    assert m["recall_at_p90"] is None and m["threshold_at_p90"] is None
    # Rank = (predictions of Q1 scoring >= the true pair) - 1 = 1: found at rank 10, not rank 1.
    assert m["recall_at_rank1"] == 0.0
    assert m["recall_at_rank10"] == 1.0


def test_breaking_the_tie_changes_the_result():
    gt = gt_of([("Q1", "R1")])
    preds = predictions_of([("Q1", "R1", 1.0 + 1e-9), ("Q1", "R2", 1.0), ("Q2", "R3", 1.0)])
    m = evaluate(gt, preds).to_dict()
    assert m["average_precision"] == 1.0
    assert m["recall_at_p90"] == 1.0
    assert m["threshold_at_p90"] == 1.0 + 1e-9
    assert m["recall_at_rank1"] == 1.0


def test_distractor_query_predictions_are_false_positives():
    gt = gt_of([("Q1", "R1")], distractors=["Q9"])
    preds = predictions_of([("Q9", "R5", 0.9), ("Q1", "R1", 0.8)])
    m = evaluate(gt, preds).to_dict()
    assert m["average_precision"] == pytest.approx(0.5)
    assert m["n_predictions"] == 2 and m["n_gt"] == 1
    assert m["recall_at_p90"] is None
    # A distractor's own predictions never affect another query's rank.
    assert m["recall_at_rank1"] == 1.0


def test_unknown_query_counts_as_false_positive_unless_restricted():
    gt = gt_of([("Q1", "R1")])
    preds = predictions_of([("QX", "R5", 0.9), ("Q1", "R1", 0.8)])
    assert evaluate(gt, preds).average_precision == pytest.approx(0.5)
    restricted = evaluate(gt, preds, restrict_to_gt_queries=True)
    assert restricted.average_precision == 1.0
    assert restricted.n_predictions == 1


def test_query_with_two_true_references():
    gt = gt_of([("Q1", "R1"), ("Q1", "R2"), ("Q2", "R3")])
    preds = predictions_of(
        [("Q1", "R1", 0.9), ("Q1", "R7", 0.8), ("Q1", "R2", 0.7), ("Q2", "R4", 0.6)]
    )
    m = evaluate(gt, preds).to_dict()
    # Cutoffs: +(1/1), -, +(2/3), -  ->  AP = (1 + 2/3) / 3; Q2-R3 never predicted.
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["recall_at_p90"] == pytest.approx(1 / 3)
    assert m["threshold_at_p90"] == 0.9
    assert m["recall_at_rank1"] == pytest.approx(1 / 3)  # R2 has rank 2
    assert m["recall_at_rank10"] == pytest.approx(2 / 3)


def test_p90_unreachable():
    gt = gt_of([("Q1", "R1"), ("Q2", "R2")])
    preds = predictions_of([("Q1", "R9", 0.9), ("Q1", "R1", 0.8), ("Q2", "R2", 0.7)])
    m = evaluate(gt, preds).to_dict()
    assert m["recall_at_p90"] is None and m["threshold_at_p90"] is None
    assert m["average_precision"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_all_correct():
    pairs = [(f"Q{i}", f"R{i}") for i in range(20)]
    gt = gt_of(pairs, distractors=["Q99"])
    preds = predictions_of([(q, r, float(i)) for i, (q, r) in enumerate(pairs)])
    m = evaluate(gt, preds).to_dict()
    assert m["average_precision"] == 1.0
    assert m["recall_at_p90"] == 1.0
    assert m["threshold_at_p90"] == 0.0  # the lowest-scoring correct prediction
    assert m["recall_at_rank1"] == 1.0 and m["recall_at_rank10"] == 1.0


def test_rank_counts_ties_within_the_query_only():
    gt = gt_of([("Q1", "R1")])
    rows = [("Q1", "R1", 0.5)] + [("Q1", f"N{i}", 0.5 + i) for i in range(1, 12)]
    rows += [("Q2", f"M{i}", 10.0) for i in range(30)]
    m = evaluate(gt, predictions_of(rows)).to_dict()
    assert m["recall_at_rank10"] == 0.0  # 11 of Q1's predictions score above it: rank 11


def test_no_ground_truth_pairs_gives_undefined_metrics():
    gt = GroundTruth(queries=["Q1"], query=[], reference=[])
    m = evaluate(gt, predictions_of([("Q1", "R1", 0.5)])).to_dict()
    assert m["average_precision"] is None and m["recall_at_rank1"] is None
    assert m["n_gt"] == 0 and m["n_predictions"] == 1


def test_to_dict_has_exactly_the_published_keys():
    m = evaluate(gt_of([("Q1", "R1")]), predictions_of([("Q1", "R1", 1.0)]))
    assert list(m.to_dict()) == METRIC_KEYS


def test_duplicate_prediction_pairs_are_an_error():
    gt = gt_of([("Q1", "R1")])
    preds = predictions_of([("Q1", "R1", 0.9), ("Q1", "R2", 0.5), ("Q1", "R1", 0.1)])
    with pytest.raises(InputError, match="duplicate.*Q1,R1"):
        evaluate(gt, preds)


def test_nan_score_is_an_error():
    with pytest.raises(InputError, match="finite"):
        evaluate(gt_of([("Q1", "R1")]), predictions_of([("Q1", "R1", float("nan"))]))


def test_long_and_non_ascii_ids_take_the_general_path():
    gt = gt_of([("query-number-00001", "réf-1"), ("query-number-00002", "réf-2")])
    preds = predictions_of(
        [("query-number-00001", "réf-1", 0.9), ("query-number-00002", "réf-3", 0.8)]
    )
    assert evaluate(gt, preds).average_precision == pytest.approx(0.5)


def test_precision_recall_curve_matches_the_definition():
    gt = gt_of([("Q1", "R1"), ("Q2", "R2")])
    preds = predictions_of([("Q1", "R1", 0.5), ("Q1", "R3", 0.5), ("Q2", "R2", 0.2)])
    precision, recall, thresholds = precision_recall_curve(gt, preds)
    np.testing.assert_allclose(precision, [0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(recall, [0, 1 / 2, 1])
    np.testing.assert_allclose(thresholds, [0.5, 0.5, 0.2])


# ---------------------------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------------------------

ids = st.integers(0, 5)
# Few distinct scores so that ties (within and across queries) are frequent.
scores = st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 3.0])


@st.composite
def cases(draw):
    gt_pairs = draw(st.lists(st.tuples(ids, ids), unique=True, max_size=10))
    pred_pairs = draw(st.lists(st.tuples(ids, ids), unique=True, min_size=1, max_size=30))
    rows = [(f"Q{q}", f"R{r}", draw(scores)) for q, r in pred_pairs]
    # Bias towards hits: some predictions copy true pairs.
    for q, r in draw(st.lists(st.sampled_from(gt_pairs), unique=True)) if gt_pairs else []:
        if (q, r) not in pred_pairs:
            rows.append((f"Q{q}", f"R{r}", draw(scores)))
    gt_pairs = [(f"Q{q}", f"R{r}") for q, r in gt_pairs]
    distractors = [f"Q{q}" for q in draw(st.lists(ids, max_size=3))]
    return gt_pairs, rows, distractors


@settings(max_examples=300, deadline=None)
@given(cases(), st.booleans())
def test_matches_the_slow_reference(case, restrict):
    gt_pairs, rows, distractors = case
    gt = gt_of(gt_pairs, distractors=[d for d in distractors if d not in {q for q, _ in gt_pairs}])
    restrict_to = set(gt.queries.tolist()) if restrict else None
    expected = slow_metrics(gt_pairs, rows, restrict_to)
    got = evaluate(gt, predictions_of(rows), restrict_to_gt_queries=restrict).to_dict()
    assert_same(got, expected)
    if gt_pairs:
        precision, recall, _ = precision_recall_curve(
            gt, predictions_of(rows), restrict_to_gt_queries=restrict
        )
        ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
        assert ap == pytest.approx(expected["average_precision"], abs=1e-12)
