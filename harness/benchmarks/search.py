"""Global-capped search (`harness.isc.search`) against its floor, a bare faiss flat kNN."""

from __future__ import annotations

import numpy as np

DESCRIPTION = (
    "ISC global-capped search, (queries x references x dim) = (5k x 100k x 256) and a larger "
    "case, vs a bare faiss flat kNN with the same k and batches"
)
TARGET_RATIO = 1.3
FULL_CASES = ((5_000, 100_000, 256), (10_000, 200_000, 256))
QUICK_CASES = ((500, 10_000, 64), (1_000, 20_000, 64))


def synthetic_descriptors(n_queries: int, n_references: int, dim: int, seed: int = 0):
    """L2-normalized Gaussian references; a fifth of the queries are noisy copies of references
    (so some queries own many of the cap's candidates and need a second pass), the rest noise."""
    from harness.isc import Descriptors, l2_normalize

    rng = np.random.default_rng(seed)
    references = l2_normalize(rng.standard_normal((n_references, dim), dtype=np.float32))
    queries = l2_normalize(rng.standard_normal((n_queries, dim), dtype=np.float32))
    n_copies = n_queries // 5
    source = rng.choice(n_references, n_copies, replace=False)
    noise = rng.standard_normal((n_copies, dim), dtype=np.float32)
    queries[:n_copies] = l2_normalize(references[source] + 0.5 * noise / np.sqrt(dim))
    return (
        Descriptors(np.char.add("Q", np.arange(n_queries).astype(str)), queries),
        Descriptors(np.char.add("R", np.arange(n_references).astype(str)), references),
    )


def _traced(fn):
    """Run `fn` under tracemalloc; return its result and the peak of numpy/Python allocations."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def run(quick: bool) -> list[dict]:
    from tqdm import tqdm

    from harness.benchmarks import timed
    from harness.isc.search import (
        DEFAULT_BATCH_SIZE,
        FlatIndex,
        capped_search,
        default_max_results,
        initial_k,
    )

    rows = []
    cases = QUICK_CASES if quick else FULL_CASES
    batch_size = DEFAULT_BATCH_SIZE
    for n_queries, n_references, dim in tqdm(cases, desc="bench search", leave=False):
        query, reference = synthetic_descriptors(n_queries, n_references, dim)
        index = FlatIndex.build(reference.features, "l2")
        max_results = default_max_results(n_queries)
        k = initial_k(n_queries, n_references, max_results)

        def bare_knn(index=index, features=query.features, k=k):
            for start in range(0, len(features), batch_size):
                index.scores(features[start : start + batch_size], k)

        stats: dict = {}

        def capped(index=index, features=query.features, max_results=max_results, stats=stats):
            return capped_search(index, features, max_results, batch_size=batch_size, stats=stats)

        bare_knn()  # warm-up: page in the index, start the thread pool
        # Alternate the two so that load from other processes hits both alike; keep the best.
        bare_seconds = capped_seconds = float("inf")
        for _ in range(3 if quick else 2):
            (_, bare_peak), seconds = timed(lambda f=bare_knn: _traced(f))
            bare_seconds = min(bare_seconds, seconds)
            (result, capped_peak), seconds = timed(lambda f=capped: _traced(f))
            capped_seconds = min(capped_seconds, seconds)
        requeried = sum(n for _, n in stats["passes"][1:])
        rows.append(
            {
                "benchmark": "search",
                "case": f"{n_queries:,} x {n_references:,} x {dim}",
                "n_queries": n_queries,
                "n_references": n_references,
                "dim": dim,
                "device": "gpu" if index.gpu is not None else "cpu",
                "max_results": max_results,
                "k": k,
                "seconds": capped_seconds,
                "reference_seconds": bare_seconds,
                "ratio": capped_seconds / bare_seconds,
                "target": f"<= {TARGET_RATIO:g}x bare kNN",
                "requeried": requeried,
                "passes": len(stats["passes"]),
                "peak_mb": capped_peak / 2**20,
                "reference_peak_mb": bare_peak / 2**20,
                "results": len(result[0]),
            }
        )
    return rows
