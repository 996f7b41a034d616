"""The three plain containers the evaluation core passes around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_str_array(values) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "U":
        return array
    if array.size == 0:
        return np.zeros(0, dtype="<U1")
    return array.astype(str)


@dataclass
class GroundTruth:
    """`queries`: every query id listed in the file, distractors included, unique.
    `query`/`reference`: the n_gt true (query, reference) pairs."""

    queries: np.ndarray
    query: np.ndarray
    reference: np.ndarray

    def __post_init__(self):
        self.queries = _as_str_array(self.queries)
        self.query = _as_str_array(self.query)
        self.reference = _as_str_array(self.reference)
        if len(self.query) != len(self.reference):
            raise ValueError("GroundTruth: query and reference must have the same length")

    @property
    def n_gt(self) -> int:
        return len(self.query)


@dataclass
class Predictions:
    """Parallel arrays of candidate matches; a higher score means more similar."""

    query: np.ndarray
    reference: np.ndarray
    score: np.ndarray

    def __post_init__(self):
        self.query = _as_str_array(self.query)
        self.reference = _as_str_array(self.reference)
        self.score = np.asarray(self.score)
        if not (len(self.query) == len(self.reference) == len(self.score)):
            raise ValueError("Predictions: query, reference and score must have the same length")

    def __len__(self) -> int:
        return len(self.score)


@dataclass
class Descriptors:
    """`ids` as a str array, `features` float32 of shape (n, d)."""

    ids: np.ndarray
    features: np.ndarray

    def __post_init__(self):
        self.ids = _as_str_array(self.ids)
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        if self.features.ndim != 2:
            raise ValueError(f"Descriptors: features must be 2-D, got shape {self.features.shape}")
        if len(self.ids) != len(self.features):
            raise ValueError(
                f"Descriptors: {len(self.ids)} ids but {len(self.features)} feature rows"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.features.shape[1]
