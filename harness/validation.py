"""Periodic validation: the current model's µAP and recall@1 on a fixed subset of the benchmark.

The subset is drawn once from the run seed (`validation_split`): `eval.val_queries` queries,
distractors in their proportion, and `eval.val_references` references, the true matches of the
chosen queries first and random others after. Each pass uses the final evaluation's own descriptor
path, capped search (10 x the subset's queries unless eval.max_results / eval.knn say otherwise)
and metrics (`harness.isc.evaluate_descriptors`), so a curve's last point and the final figure
differ only by the subset. Points are raw µAP: the normalized row needs descriptors of the whole
training set, a full pass per point, so validation leaves it out (the record says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.seeding import STREAM_VALIDATION, derive_seeds

NORMALIZED_NOTE = (
    "validation points are raw µAP: score normalization needs descriptors of the whole training "
    "set, a full pass per point"
)


@dataclass
class ValidationSplit:
    queries: Any  # harness.data.ImageSet
    references: Any
    ground_truth: Any  # harness.isc.GroundTruth, restricted to the subset


def validation_split(benchmark, n_queries: int, n_references: int, seed: int) -> ValidationSplit:
    """The fixed validation subset of `benchmark` for run seed `seed` (module doc)."""
    from harness.data.layout import ImageSet
    from harness.isc import GroundTruth

    for key, wanted, split in (
        ("val_queries", n_queries, benchmark.queries),
        ("val_references", n_references, benchmark.references),
    ):
        if wanted > len(split):
            raise ConfigError(
                f"eval.{key} is {wanted}, but the benchmark has {len(split)} "
                f"{'queries' if key == 'val_queries' else 'references'}; lower it"
            )
    rng = np.random.default_rng(int(derive_seeds(seed, STREAM_VALIDATION)[0]))
    query_rows = np.sort(rng.choice(len(benchmark.queries), n_queries, replace=False))
    query_ids = {benchmark.queries.ids[i] for i in query_rows}
    gt = benchmark.ground_truth
    true_refs = list(
        dict.fromkeys(r for q, r in zip(gt.query, gt.reference, strict=True) if q in query_ids)
    )
    ref_row = {rid: i for i, rid in enumerate(benchmark.references.ids)}
    chosen = [ref_row[r] for r in true_refs if r in ref_row][:n_references]
    others = np.setdiff1d(np.arange(len(benchmark.references)), chosen)
    fill = rng.choice(others, n_references - len(chosen), replace=False)
    ref_rows = np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), fill]))
    ref_ids = {benchmark.references.ids[i] for i in ref_rows}
    # A pair whose reference did not fit the subset leaves its query a distractor.
    pairs = [
        (q, r)
        for q, r in zip(gt.query, gt.reference, strict=True)
        if q in query_ids and r in ref_ids
    ]

    def subset(images, rows):
        return ImageSet([images.ids[i] for i in rows], [images.paths[i] for i in rows])

    return ValidationSplit(
        queries=subset(benchmark.queries, query_rows),
        references=subset(benchmark.references, ref_rows),
        ground_truth=GroundTruth(
            queries=np.asarray(sorted(query_ids & set(gt.queries)), dtype=str),
            query=np.asarray([q for q, _ in pairs], dtype=str),
            reference=np.asarray([r for _, r in pairs], dtype=str),
        ),
    )


class Validator:
    """Calling it with a method returns one curve point's metrics (the model's mode is the
    caller's to restore; harness/train.py does)."""

    def __init__(self, split: ValidationSplit, cfg, device, skip_log=None):
        self.split = split
        self.cfg = cfg
        self.device = device
        self.skip_log = skip_log  # the run's skipped-images file (data.skip_bad_images)

    def __call__(self, method) -> dict[str, float]:
        from harness.describe import described_ground_truth, extract_descriptors
        from harness.isc import evaluate_descriptors

        started = time.perf_counter()
        query, reference = (
            extract_descriptors(
                method,
                images,
                role,
                self.cfg,
                self.device,
                split=name,
                progress=False,
                skip_log=self.skip_log,
            )
            for name, images, role in (
                ("validation queries", self.split.queries, "query"),
                ("validation references", self.split.references, "reference"),
            )
        )
        # Images skipped as bad (data.skip_bad_images) have no descriptor: nor ground-truth rows.
        gt = described_ground_truth(
            self.split.ground_truth, self.split.queries, self.split.references, query, reference
        )
        _, metrics = evaluate_descriptors(
            gt,
            query,
            reference,
            max_results=self.cfg.eval.max_results,
            knn=self.cfg.eval.knn,
            metric=self.cfg.eval.metric,
        )
        return {
            "val_micro_ap": _number(metrics.average_precision),
            "val_recall_at_1": _number(metrics.recall_at_rank1),
            "val_seconds": time.perf_counter() - started,
        }


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
