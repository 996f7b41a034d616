"""Descriptor post-processing with training-set descriptors, each a named, optional step.

- Score normalization (isc2021 `scripts/score_normalization.py`): score'(q, r) = <q, r> - beta * s(q),
  where s(q) is q's inner product with its n-th nearest training descriptor ("nth", isc2021) or the
  mean over its n nearest ("mean", SSCD). Query side only. isc2021 composes it with the global cap
  by *augmenting a dimension*, not by rescoring a kNN list: q' = [q, -beta * s(q)], r' = [r, 1], and
  the capped search runs on q', r' with inner-product scores, so the cap selects the K best
  *normalized* scores. We do the same (`normalized_search`). Inner products assume L2-normalized
  descriptors (then -||q - r||^2 = 2<q, r> - 2, the same ranking as L2).
- Negative-embedding subtraction (the ISC 2021 descriptor-track winner): x <- normalize(x - alpha *
  mean of x's k nearest training descriptors), on both the query and the reference side.
- PCA whitening: a faiss PCAMatrix (eigen_power -0.5) fitted on training descriptors, then
  L2-normalization (the re-normalization is our choice, an option).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from harness.errors import ConfigError, InputError
from harness.isc.search import search
from harness.isc.types import Descriptors, Predictions


@dataclass(frozen=True)
class ScoreNormalization:
    """Options of score normalization; `isc2021()` and `sscd()` give the published settings."""

    beta: float = 2.0
    n: int = 10
    reduction: Literal["nth", "mean"] = "nth"

    def __post_init__(self):
        if self.reduction not in ("nth", "mean"):
            raise ConfigError(
                f"score normalization reduction {self.reduction!r}: use 'nth' or 'mean'"
            )
        if self.n < 1:
            raise ConfigError(f"score normalization n must be >= 1, got {self.n}")

    @classmethod
    def isc2021(cls) -> ScoreNormalization:
        return cls(beta=2.0, n=10, reduction="nth")

    @classmethod
    def sscd(cls) -> ScoreNormalization:
        return cls(beta=1.0, n=3, reduction="mean")

    @classmethod
    def named(cls, name: str) -> ScoreNormalization:
        presets = {"isc2021": cls.isc2021, "sscd": cls.sscd}
        if name not in presets:
            raise ConfigError(
                f"unknown score normalization {name!r}; choose from {sorted(presets)}"
            )
        return presets[name]()


def l2_normalize(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_training(training: Descriptors | None, like: Descriptors, what: str) -> Descriptors:
    if training is None or len(training) == 0:
        raise ConfigError(f"{what} needs training-set descriptors")
    if training.dim != like.dim:
        raise InputError(
            f"{what}: training descriptors have dimension {training.dim}, queries {like.dim}"
        )
    return training


def nearest_training_scores(features: np.ndarray, training: Descriptors, k: int) -> np.ndarray:
    """Inner products of each row with its k nearest training descriptors, (n, k), descending."""
    import faiss

    k = min(k, len(training))
    index = faiss.IndexFlatIP(training.dim)
    index.add(training.features)
    scores, _ = index.search(np.ascontiguousarray(features, dtype=np.float32), k)
    return scores


def normalization_terms(
    query: Descriptors, training: Descriptors, options: ScoreNormalization
) -> np.ndarray:
    """beta * s(q) for every query: what score normalization subtracts."""
    _check_training(training, query, "score normalization")
    if options.n > len(training):
        raise ConfigError(
            f"score normalization uses the {options.n}-th training neighbour but only "
            f"{len(training)} training descriptors were given"
        )
    scores = nearest_training_scores(query.features, training, options.n)
    similarity = scores[:, -1] if options.reduction == "nth" else scores.mean(axis=1)
    return (options.beta * similarity).astype(np.float32)


def normalized_search(
    query: Descriptors,
    reference: Descriptors,
    training: Descriptors,
    options: ScoreNormalization,
    *,
    max_results: int | None = None,
    knn: int | None = None,
    **search_options,
) -> Predictions:
    """Search with normalized scores <q, r> - beta * s(q), the cap applied to those scores."""
    terms = normalization_terms(query, training, options)
    augmented_query = Descriptors(query.ids, np.hstack([query.features, -terms[:, None]]))
    augmented_reference = Descriptors(
        reference.ids, np.hstack([reference.features, np.ones((len(reference), 1), np.float32)])
    )
    return search(
        augmented_query,
        augmented_reference,
        max_results=max_results,
        knn=knn,
        metric="ip",
        **search_options,
    )


def subtract_negative_embedding(
    descriptors: Descriptors, training: Descriptors, *, alpha: float = 0.35, k: int = 10
) -> Descriptors:
    """normalize(x - alpha * mean of x's k nearest training descriptors (by inner product))."""
    import faiss

    _check_training(training, descriptors, "negative-embedding subtraction")
    k = min(k, len(training))
    index = faiss.IndexFlatIP(training.dim)
    index.add(training.features)
    _, neighbours = index.search(descriptors.features, k)
    mean_negative = training.features[neighbours].mean(axis=1)
    return Descriptors(descriptors.ids, l2_normalize(descriptors.features - alpha * mean_negative))


@dataclass
class PCAWhitening:
    """A PCA (with whitening) fitted on training descriptors; `apply` maps any split."""

    matrix: object
    normalize: bool = True

    @classmethod
    def fit(
        cls,
        training: Descriptors,
        *,
        dim: int | None = None,
        eigen_power: float = -0.5,
        normalize: bool = True,
    ) -> PCAWhitening:
        import faiss

        dim = dim or training.dim
        if dim > training.dim:
            raise ConfigError(
                f"PCA output dimension {dim} exceeds the input dimension {training.dim}"
            )
        if len(training) < dim:
            raise ConfigError(
                f"PCA whitening to {dim} dimensions needs at least {dim} training descriptors, got {len(training)}"
            )
        matrix = faiss.PCAMatrix(training.dim, dim, eigen_power)
        matrix.train(training.features)
        # Whitening divides by the spread along each kept direction: where the training set does
        # not vary (an eigenvalue 0, up to float32 noise) it would turn every descriptor to NaN.
        eigenvalues = faiss.vector_to_array(matrix.eigenvalues)
        largest = float(eigenvalues.max(initial=0.0))
        varied = int((eigenvalues > largest * 1e-6).sum()) if largest > 0 else 0
        if eigen_power < 0 and varied < dim:
            if varied == 0:
                raise InputError(
                    "PCA whitening: the training descriptors are all equal; give varied ones"
                )
            raise InputError(
                f"PCA whitening to {dim} dimensions: the training descriptors vary in only "
                f"{varied} of {training.dim} dimensions; whiten to at most {varied}, or give "
                "more varied training descriptors"
            )
        return cls(matrix=matrix, normalize=normalize)

    def apply(self, descriptors: Descriptors) -> Descriptors:
        features = self.matrix.apply(np.ascontiguousarray(descriptors.features))
        return Descriptors(descriptors.ids, l2_normalize(features) if self.normalize else features)


@dataclass(frozen=True)
class NegativeEmbedding:
    """Options of negative-embedding subtraction (defaults: the ISC 2021 winner's)."""

    alpha: float = 0.35
    k: int = 10


def prepare_descriptors(
    query: Descriptors,
    reference: Descriptors,
    training: Descriptors | None,
    *,
    pca_dim: int | None = None,
    negatives: NegativeEmbedding | None = None,
) -> tuple[Descriptors, Descriptors, Descriptors | None]:
    """Apply the descriptor-side steps in a fixed order (ours): PCA whitening (fitted on the
    training descriptors, applied to all three), then negative-embedding subtraction (queries and
    references; the training descriptors are its bank). Score normalization comes later, in the
    search (`normalized_search`)."""
    if pca_dim is not None:
        training = _check_training(training, query, "PCA whitening")
        pca = PCAWhitening.fit(training, dim=pca_dim or None)
        query, reference, training = pca.apply(query), pca.apply(reference), pca.apply(training)
    if negatives is not None:
        training = _check_training(training, query, "negative-embedding subtraction")
        query = subtract_negative_embedding(query, training, alpha=negatives.alpha, k=negatives.k)
        reference = subtract_negative_embedding(
            reference, training, alpha=negatives.alpha, k=negatives.k
        )
    return query, reference, training
