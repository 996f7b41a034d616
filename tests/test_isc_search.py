"""Capped search and post-processing against brute-force numpy and the formulas they implement."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.isc import (
    Descriptors,
    GroundTruth,
    PCAWhitening,
    ScoreNormalization,
    evaluate,
    evaluate_descriptors,
    l2_normalize,
    normalized_search,
    search,
    subtract_negative_embedding,
)
from harness.isc.search import initial_k


def random_descriptors(prefix, n, d=16, seed=0, normalize=False):
    features = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    if normalize:
        features = l2_normalize(features)
    return Descriptors(ids=[f"{prefix}{i:05d}" for i in range(n)], features=features)


def brute_scores(query, reference, metric="l2"):
    q, r = query.features.astype(np.float64), reference.features.astype(np.float64)
    if metric == "ip":
        return q @ r.T
    return -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)


def assert_is_top(predictions, query, reference, scores, count, tol=1e-4):
    """`predictions` holds `count` distinct pairs, exactly the best by `scores` up to float error."""
    assert len(predictions) == count
    qi = np.searchsorted(query.ids, predictions.query)
    ri = np.searchsorted(reference.ids, predictions.reference)
    assert len(set(zip(qi.tolist(), ri.tolist(), strict=True))) == count
    np.testing.assert_allclose(predictions.score, scores[qi, ri], rtol=1e-4, atol=tol)
    threshold = np.sort(scores.ravel())[::-1][count - 1]
    assert (scores[qi, ri] >= threshold - tol).all()
    # Every pair clearly inside the cap was returned.
    clearly_in = np.argwhere(scores > threshold + tol)
    returned = set(zip(qi.tolist(), ri.tolist(), strict=True))
    assert {(int(a), int(b)) for a, b in clearly_in} <= returned


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_global_cap_matches_brute_force(metric):
    query, reference = random_descriptors("Q", 120, seed=1), random_descriptors("R", 700, seed=2)
    predictions = search(query, reference, metric=metric, batch_size=32)
    assert_is_top(predictions, query, reference, brute_scores(query, reference, metric), 1200)


def test_cap_is_global_not_per_query():
    # Half the queries are copies of references (strong matches), half are far away: the cap
    # goes to the close ones, far beyond k per query, and the far ones get nothing.
    rng = np.random.default_rng(3)
    reference = random_descriptors("R", 400, seed=4)
    close = reference.features[:20] + 0.01 * rng.standard_normal((20, 16)).astype(np.float32)
    far = 100 + rng.standard_normal((20, 16)).astype(np.float32)
    query = Descriptors([f"Q{i:03d}" for i in range(40)], np.vstack([close, far]))
    predictions = search(query, reference, max_results=2000, batch_size=7)
    scores = brute_scores(query, reference)
    assert_is_top(predictions, query, reference, scores, 2000)
    per_query = {
        q: c for q, c in zip(*np.unique(predictions.query, return_counts=True), strict=True)
    }
    assert max(per_query.values()) > initial_k(40, 400, 2000)  # needed the second pass
    assert not any(q in per_query for q in query.ids[20:])


def test_cap_larger_than_all_pairs_returns_every_pair():
    query, reference = random_descriptors("Q", 5, seed=1), random_descriptors("R", 7, seed=2)
    predictions = search(query, reference, max_results=1000)
    assert len(predictions) == 35


def test_all_ties_are_cut_to_exactly_the_cap():
    query = Descriptors([f"Q{i}" for i in range(5)], np.zeros((5, 4), np.float32))
    reference = Descriptors([f"R{i}" for i in range(50)], np.zeros((50, 4), np.float32))
    predictions = search(query, reference, max_results=12, batch_size=2)
    assert len(predictions) == 12 and (predictions.score == 0).all()
    assert len(set(zip(predictions.query, predictions.reference, strict=True))) == 12


def test_batch_size_does_not_change_the_result():
    query, reference = random_descriptors("Q", 90, seed=5), random_descriptors("R", 300, seed=6)
    a = search(query, reference, batch_size=8)
    b = search(query, reference, batch_size=10_000)
    assert sorted(zip(a.query, a.reference, strict=True)) == sorted(
        zip(b.query, b.reference, strict=True)
    )


def test_knn_is_per_query():
    query, reference = random_descriptors("Q", 30, seed=7), random_descriptors("R", 200, seed=8)
    predictions = search(query, reference, knn=5, batch_size=4)
    scores = brute_scores(query, reference)
    expected = np.argsort(-scores, axis=1)[:, :5]
    got = np.searchsorted(reference.ids, predictions.reference).reshape(30, 5)
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(expected, axis=1))
    assert (predictions.query.reshape(30, 5) == query.ids[:, None]).all()


def test_bad_search_options():
    query, reference = random_descriptors("Q", 3), random_descriptors("R", 3)
    with pytest.raises(ConfigError, match="not both"):
        search(query, reference, knn=2, max_results=4)
    with pytest.raises(ConfigError, match="metric"):
        search(query, reference, metric="cosine")


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [ScoreNormalization.isc2021(), ScoreNormalization.sscd()])
def test_score_normalization_matches_the_formula(options):
    query = random_descriptors("Q", 60, seed=9, normalize=True)
    reference = random_descriptors("R", 250, seed=10, normalize=True)
    training = random_descriptors("T", 300, seed=11, normalize=True)
    # Direct formula: <q, r> - beta * s(q), s from the brute-force training similarities.
    similarity = np.sort(brute_scores(query, training, "ip"), axis=1)[:, ::-1]
    if options.reduction == "nth":
        s = similarity[:, options.n - 1]
    else:
        s = similarity[:, : options.n].mean(axis=1)
    expected = brute_scores(query, reference, "ip") - options.beta * s[:, None]
    predictions = normalized_search(query, reference, training, options, max_results=500)
    assert_is_top(predictions, query, reference, expected, 500)


def test_score_normalization_needs_training():
    query, reference = random_descriptors("Q", 3), random_descriptors("R", 3)
    gt = GroundTruth(queries=["Q00000"], query=["Q00000"], reference=["R00000"])
    with pytest.raises(ConfigError, match="training"):
        evaluate_descriptors(gt, query, reference, score_norm=ScoreNormalization())


def test_negative_embedding_subtraction_matches_the_formula():
    x = random_descriptors("Q", 20, seed=12, normalize=True)
    training = random_descriptors("T", 100, seed=13, normalize=True)
    out = subtract_negative_embedding(x, training, alpha=0.35, k=10)
    nearest = np.argsort(-brute_scores(x, training, "ip"), axis=1)[:, :10]
    raw = x.features - 0.35 * training.features[nearest].mean(axis=1)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(out.features, expected, atol=1e-5)
    assert out.ids.tolist() == x.ids.tolist()


def test_pca_whitening_decorrelates_the_training_set():
    rng = np.random.default_rng(14)
    mixing = rng.standard_normal((16, 16)).astype(np.float32)
    training = Descriptors(
        [f"T{i}" for i in range(2000)], rng.standard_normal((2000, 16)).astype(np.float32) @ mixing
    )
    pca = PCAWhitening.fit(training, dim=8, normalize=False)
    whitened = pca.apply(training).features
    assert whitened.shape == (2000, 8)
    covariance = np.cov(whitened.T, bias=True)
    # Whitened up to one global scale (faiss divides by the scatter matrix's eigenvalues).
    np.testing.assert_allclose(covariance / covariance[0, 0], np.eye(8), atol=1e-3)
    assert np.allclose(
        np.linalg.norm(PCAWhitening.fit(training).apply(training).features, axis=1), 1
    )


def test_evaluate_descriptors_finds_copies():
    rng = np.random.default_rng(15)
    reference = random_descriptors("R", 300, seed=16, normalize=True)
    copies = reference.features[:40] + 0.05 * rng.standard_normal((40, 16)).astype(np.float32)
    distractors = rng.standard_normal((10, 16)).astype(np.float32)
    query = Descriptors(
        [f"Q{i:05d}" for i in range(50)], l2_normalize(np.vstack([copies, distractors]))
    )
    gt = GroundTruth(queries=query.ids, query=query.ids[:40], reference=reference.ids[:40])
    predictions, metrics = evaluate_descriptors(gt, query, reference)
    assert len(predictions) == 500
    assert metrics.average_precision > 0.9 and metrics.recall_at_rank1 == 1.0
    assert metrics.to_dict() == evaluate(gt, predictions).to_dict()
    training = random_descriptors("T", 200, seed=17, normalize=True)
    _, normalized = evaluate_descriptors(
        gt, query, reference, training, score_norm=ScoreNormalization()
    )
    assert normalized.average_precision > 0.9


def test_prepare_descriptors_applies_pca_then_negative_subtraction():
    from harness.isc import NegativeEmbedding, prepare_descriptors

    query = random_descriptors("Q", 10, seed=18)
    reference = random_descriptors("R", 30, seed=19)
    training = random_descriptors("T", 200, seed=20)
    q, r, t = prepare_descriptors(
        query, reference, training, pca_dim=8, negatives=NegativeEmbedding(alpha=0.5, k=4)
    )
    pca = PCAWhitening.fit(training, dim=8)
    expected_t = pca.apply(training)
    np.testing.assert_allclose(t.features, expected_t.features, atol=1e-6)
    expected_q = subtract_negative_embedding(pca.apply(query), expected_t, alpha=0.5, k=4)
    np.testing.assert_allclose(q.features, expected_q.features, atol=1e-6)
    assert r.dim == 8 and np.allclose(np.linalg.norm(r.features, axis=1), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="needs training"):
        prepare_descriptors(query, reference, None, pca_dim=4)
