"""The ISC 2021 (DISC21) evaluation core: file I/O, metrics, exact capped search, post-processing.

Pure functions over numpy arrays; see docs/architecture.md for the contract.
"""

from harness.isc.io import (
    MAX_DESCRIPTOR_DIM,
    read_descriptors,
    read_ground_truth,
    read_predictions,
    write_descriptors,
    write_ground_truth,
    write_predictions,
)
from harness.isc.metrics import Metrics, evaluate, precision_recall_curve
from harness.isc.pipeline_eval import evaluate_descriptors
from harness.isc.postprocess import (
    NegativeEmbedding,
    PCAWhitening,
    ScoreNormalization,
    l2_normalize,
    normalization_terms,
    normalized_search,
    prepare_descriptors,
    subtract_negative_embedding,
)
from harness.isc.search import default_max_results, search
from harness.isc.types import Descriptors, GroundTruth, Predictions

__all__ = [
    "MAX_DESCRIPTOR_DIM",
    "Descriptors",
    "GroundTruth",
    "Metrics",
    "NegativeEmbedding",
    "PCAWhitening",
    "Predictions",
    "ScoreNormalization",
    "default_max_results",
    "evaluate",
    "evaluate_descriptors",
    "l2_normalize",
    "normalization_terms",
    "normalized_search",
    "precision_recall_curve",
    "prepare_descriptors",
    "read_descriptors",
    "read_ground_truth",
    "read_predictions",
    "search",
    "subtract_negative_embedding",
    "write_descriptors",
    "write_ground_truth",
    "write_predictions",
]
