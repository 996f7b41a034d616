"""One call from descriptors to metrics, for the run pipeline and the `score` command."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from harness.errors import ConfigError
from harness.isc.metrics import Metrics, evaluate
from harness.isc.postprocess import ScoreNormalization, normalized_search
from harness.isc.search import search
from harness.isc.types import Descriptors, GroundTruth, Predictions


def evaluate_descriptors(
    gt: GroundTruth,
    query: Descriptors,
    reference: Descriptors,
    training: Descriptors | None = None,
    *,
    score_norm: ScoreNormalization | None = None,
    max_results: int | None = None,
    knn: int | None = None,
    metric: str = "l2",
    restrict_to_gt_queries: bool = False,
    progress: bool = False,
    stage: Callable[[str], AbstractContextManager] | None = None,
) -> tuple[Predictions, Metrics]:
    """Search (ISC global cap unless `knn`), then score against `gt`.

    With `score_norm`, scores are normalized with `training` descriptors before the cap is
    applied (isc2021's augmented-dimension inner-product search; `metric` is then ignored).
    `stage("search")` and `stage("metrics")`, if given, wrap the two steps (the pipeline's
    per-stage clock)."""
    if score_norm is not None and training is None:
        raise ConfigError("score normalization needs training descriptors")
    stage = stage or (lambda _name: nullcontext())
    with stage("search"):
        if score_norm is not None:
            predictions = normalized_search(
                query,
                reference,
                training,
                score_norm,
                max_results=max_results,
                knn=knn,
                progress=progress,
            )
        else:
            predictions = search(
                query, reference, max_results=max_results, knn=knn, metric=metric, progress=progress
            )
    with stage("metrics"):
        metrics = evaluate(gt, predictions, restrict_to_gt_queries=restrict_to_gt_queries)
    return predictions, metrics
