"""Benchmark data: the DISC21-style layout reader, torch datasets, the generated mini-DISC."""

from harness.data.datasets import ImageDataset, TrainingDataset, open_rgb
from harness.data.edits import EDIT_FAMILIES, EditSettings, apply_edit, random_edits
from harness.data.layout import Benchmark, ImageSet, load_benchmark

__all__ = [
    "EDIT_FAMILIES",
    "Benchmark",
    "EditSettings",
    "ImageDataset",
    "ImageSet",
    "TrainingDataset",
    "apply_edit",
    "load_benchmark",
    "open_rgb",
    "random_edits",
]
