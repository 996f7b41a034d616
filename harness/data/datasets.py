"""Torch datasets over an `ImageSet`: decode one file per item, so a DataLoader with workers streams
the split in parallel and no split ever has to sit in memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from harness.data.layout import ImageSet
from harness.errors import InputError


def open_rgb(path: Path) -> Image.Image:
    """Decode `path` fully as RGB; a bad file is an InputError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"{path}: does not decode ({type(err).__name__}: {err}); "
            "remove it or load the benchmark with --skip-bad-images"
        ) from err


class ImageDataset(Dataset):
    """Items are `(transform(image), index, id)`, for descriptor extraction."""

    def __init__(self, image_set: ImageSet, transform: Callable):
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int):
        image = open_rgb(self.image_set.paths[index])
        return self.transform(image), index, self.image_set.ids[index]


class TrainingDataset(Dataset):
    """Items are `{"views": [n_views augmented tensors], "clean": tensor, "index": i, "id": id}`.

    The clean image (evaluation transform only) comes with every item because some methods use it
    (QK iteration's cached keys, memory-bank initialisation) and decoding twice would cost more.
    """

    def __init__(
        self,
        image_set: ImageSet,
        view_transform: Callable,
        clean_transform: Callable,
        n_views: int = 2,
    ):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.image_set = image_set
        self.view_transform = view_transform
        self.clean_transform = clean_transform
        self.n_views = n_views

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> dict:
        image = open_rgb(self.image_set.paths[index])
        return {
            "views": [self.view_transform(image) for _ in range(self.n_views)],
            "clean": self.clean_transform(image),
            "index": index,
            "id": self.image_set.ids[index],
        }
