"""Benchmark data: the DISC21-style layout reader, torch datasets, the generated mini-DISC."""

from harness.data.datasets import ImageDataset, TrainingDataset, open_rgb
from harness.data.edits import EDIT_FAMILIES, EditSettings, apply_edit, random_edits
from harness.data.layout import Benchmark, ImageSet, load_benchmark
from harness.data.synth import (
    GENERATOR_VERSION,
    SynthParams,
    default_cache_dir,
    ensure_synthetic,
    resolve_data,
    synthesize,
    synthetic_path,
)

__all__ = [
    "EDIT_FAMILIES",
    "GENERATOR_VERSION",
    "Benchmark",
    "EditSettings",
    "ImageDataset",
    "ImageSet",
    "SynthParams",
    "TrainingDataset",
    "apply_edit",
    "default_cache_dir",
    "ensure_synthetic",
    "load_benchmark",
    "open_rgb",
    "random_edits",
    "resolve_data",
    "synthesize",
    "synthetic_path",
]
