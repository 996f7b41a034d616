"""Exact descriptor search under the ISC 2021 global candidate cap.

The ISC descriptor track keeps the K = 10 x n_queries best (query, reference) pairs over *all*
queries (isc2021 `search_with_capped_res`, a range search whose radius shrinks until K results
remain), not k per query. We get the same set from faiss kNN, which is much faster than a range
search that starts unbounded:

1. search every query batch for its `k` nearest references and keep a running top-K of all
   candidate pairs (pruned by the running K-th score, so memory stays O(K + batch x k));
2. once all queries are in, the K-th best score is the cap threshold. A query whose k-th
   neighbour still scores above it may have more pairs within the cap: search those
   queries again with 2k, and repeat until none is saturated.

The result is exactly the top-K pairs (ties at the K-th score are cut arbitrarily, as in isc2021).
`knn=k` gives plain per-query kNN instead (an option, not the ISC rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.errors import ConfigError, InputError
from harness.isc.types import Descriptors, Predictions

METRICS = ("l2", "ip")
# faiss GPU brute-force k-selection is limited to 2048 neighbours per query.
GPU_MAX_K = 2048
DEFAULT_BATCH_SIZE = 16384


def default_max_results(n_queries: int) -> int:
    """The ISC 2021 cap: 10 candidates per query on average, 500k for 50k queries."""
    return 10 * n_queries


def initial_k(n_queries: int, n_references: int, max_results: int) -> int:
    """Neighbours per query on the first pass: twice the average share of the cap, at least 16.

    Ours: a tradeoff between the first pass's cost and how many queries need a second pass."""
    average = math.ceil(max_results / max(n_queries, 1))
    return max(1, min(n_references, max_results, max(16, 2 * average)))


@dataclass
class FlatIndex:
    """A faiss exact index over the references, on the GPU when faiss sees one."""

    cpu: object
    gpu: object | None
    metric: str

    @classmethod
    def build(
        cls, features: np.ndarray, metric: str = "l2", use_gpu: bool | None = None
    ) -> FlatIndex:
        import faiss

        d = features.shape[1]
        cpu = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        cpu.add(np.ascontiguousarray(features, dtype=np.float32))
        if use_gpu is None:
            use_gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
        gpu = faiss.index_cpu_to_all_gpus(cpu) if use_gpu else None
        return cls(cpu=cpu, gpu=gpu, metric=metric)

    def scores(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, reference indices), each (n, k); score = -squared L2 or the inner product."""
        index = self.gpu if self.gpu is not None and k <= GPU_MAX_K else self.cpu
        distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return (-distances if self.metric == "l2" else distances), indices


def _check_inputs(query: Descriptors, reference: Descriptors, metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"search metric {metric!r}: expected one of {METRICS}")
    if query.dim != reference.dim:
        raise InputError(
            f"descriptor dimensions differ: queries have {query.dim}, references {reference.dim}"
        )
    if len(query) == 0 or len(reference) == 0:
        raise InputError(f"nothing to search: {len(query)} queries, {len(reference)} references")


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _knn(index: FlatIndex, queries: np.ndarray, k: int, batch_size: int, progress: bool):
    from tqdm import tqdm

    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for batch in tqdm(
        list(_batches(len(queries), batch_size)), desc="knn search", disable=not progress
    ):
        scores[batch], indices[batch] = index.scores(queries[batch], k)
    return scores, indices


class _TopPairs:
    """A running set holding at least the `capacity` best (score, query, reference) triples."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.score = np.zeros(0, dtype=np.float32)
        self.query = np.zeros(0, dtype=np.int64)
        self.reference = np.zeros(0, dtype=np.int64)
        self.threshold = -np.inf  # everything below can never enter the top `capacity`

    def drop_queries(self, queries: np.ndarray, n_queries: int) -> None:
        drop = np.zeros(n_queries, dtype=bool)
        drop[queries] = True
        keep = ~drop[self.query]
        self.score, self.query, self.reference = (
            self.score[keep],
            self.query[keep],
            self.reference[keep],
        )

    def add(self, score: np.ndarray, query: np.ndarray, reference: np.ndarray) -> None:
        keep = score >= self.threshold
        self.score = np.concatenate([self.score, score[keep]])
        self.query = np.concatenate([self.query, query[keep]])
        self.reference = np.concatenate([self.reference, reference[keep]])
        # Amortized: only cut back when twice the capacity has piled up.
        if len(self.score) > 2 * self.capacity:
            self.crop()

    def crop(self) -> None:
        if len(self.score) > self.capacity:
            best = np.argpartition(-self.score, self.capacity - 1)[: self.capacity]
            self.score, self.query, self.reference = (
                self.score[best],
                self.query[best],
                self.reference[best],
            )
        if len(self.score) >= self.capacity:
            self.threshold = float(self.score.min())


def capped_search(
    index: FlatIndex,
    queries: np.ndarray,
    max_results: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    k: int | None = None,
    progress: bool = False,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `max_results` best (query index, reference index, score) pairs over all queries.

    `stats`, if given, receives the passes made and how many queries each pass searched."""
    from tqdm import tqdm

    n_queries, n_references = len(queries), index.cpu.ntotal
    max_results = min(max_results, n_queries * n_references)
    k = min(n_references, k or initial_k(n_queries, n_references, max_results))
    top = _TopPairs(max_results)
    pending = np.arange(n_queries)
    kth_score = np.full(n_queries, np.inf, dtype=np.float32)
    searched_per_pass = []
    # Results held per batch stay at batch_size x (first k), whatever k later passes use.
    cells_per_batch = batch_size * k
    while len(pending):
        searched_per_pass.append((k, len(pending)))
        top.drop_queries(pending, n_queries)
        batches = list(_batches(len(pending), max(1, cells_per_batch // k)))
        for batch in tqdm(batches, desc=f"capped search (k={k})", disable=not progress):
            rows = pending[batch]
            scores, indices = index.scores(queries[rows], k)
            kth_score[rows] = scores[:, -1]
            top.add(scores.ravel(), np.repeat(rows, k), indices.ravel())
        top.crop()
        if k >= n_references:
            break
        # Saturated: the k-th neighbour is strictly inside the cap, so the (k+1)-th might be too.
        # (One equal to the threshold can only tie with the K-th pair; ties there are cut
        # arbitrarily, as in isc2021.)
        saturated = kth_score[pending] > top.threshold
        pending = pending[saturated]
        k = min(n_references, 2 * k)
    if stats is not None:
        stats["passes"] = searched_per_pass
    order = np.lexsort((-top.score, top.query))
    return top.query[order], top.reference[order], top.score[order]


def search(
    query: Descriptors,
    reference: Descriptors,
    *,
    max_results: int | None = None,
    knn: int | None = None,
    metric: str = "l2",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    index: FlatIndex | None = None,
) -> Predictions:
    """Exact search of `query` against `reference`.

    Default: the ISC global cap, keeping exactly `max_results` (10 x n_queries) pairs overall.
    `knn=k`: the k nearest references of every query instead (not the ISC rule).
    score = -squared L2 distance (`metric="l2"`) or the inner product (`metric="ip"`)."""
    _check_inputs(query, reference, metric)
    if max_results is not None and knn is not None:
        raise ConfigError(
            "give either max_results (the ISC global cap) or knn (per query), not both"
        )
    if knn is not None and knn < 1:
        raise ConfigError(f"knn must be >= 1, got {knn}")
    if max_results is not None and max_results < 1:
        raise ConfigError(f"max_results must be >= 1, got {max_results}")
    if index is None:
        index = FlatIndex.build(reference.features, metric)

    if knn is not None:
        k = min(knn, len(reference))
        scores, indices = _knn(index, query.features, k, batch_size, progress)
        query_rows = np.repeat(np.arange(len(query)), k)
        reference_rows, score = indices.ravel(), scores.ravel()
    else:
        cap = default_max_results(len(query)) if max_results is None else max_results
        query_rows, reference_rows, score = capped_search(
            index, query.features, cap, batch_size=batch_size, progress=progress
        )
    return Predictions(
        query=query.ids[query_rows], reference=reference.ids[reference_rows], score=score
    )
