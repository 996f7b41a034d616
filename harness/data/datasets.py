"""Torch datasets over an `ImageSet`: decode one file per item, so a DataLoader with workers streams
the split in parallel and no split ever has to sit in memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from harness.data.layout import SKIP_HINT, ImageSet
from harness.errors import InputError

# Integer modes PNG uses for 16-bit grayscale; PIL's convert("RGB") clips them at 255 (a white
# image), so they are rescaled to 8 bits first.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GRAY_MODES:
        # The 16-bit range is what these modes hold in PNG files (mode "I" included).
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    # Alpha is dropped (not composited): copy edits keep the RGB under transparent pixels.
    return image.convert("RGB")


def open_rgb(path: Path, draft_side: int | None = None) -> Image.Image:
    """Decode `path` as 8-bit RGB; a bad file is an InputError naming it.

    `draft_side`: a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps
    both sides >= draft_side (libjpeg skips the finer coefficients: a 1024x768 file decodes
    several times faster at 1/8). None, or any other format: the full image."""
    try:
        with Image.open(path) as image:
            if draft_side is not None and image.format == "JPEG":
                image.draft(None, (draft_side, draft_side))
            return _to_rgb(image)
    except Image.DecompressionBombError as err:
        raise InputError(
            f"{path}: too large to decode safely ({err}); remove it, or {SKIP_HINT}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"{path}: does not decode ({type(err).__name__}: {err}); remove it, or {SKIP_HINT}"
        ) from err


class ImageDataset(Dataset):
    """Items are `(transform(image), index, id)`, for descriptor extraction."""

    def __init__(self, image_set: ImageSet, transform: Callable, draft_side: int | None = None):
        self.image_set = image_set
        self.transform = transform
        self.draft_side = draft_side  # see open_rgb

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int):
        image = open_rgb(self.image_set.paths[index], self.draft_side)
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
        draft_side: int | None = None,
    ):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.image_set = image_set
        self.view_transform = view_transform
        self.clean_transform = clean_transform
        self.n_views = n_views
        self.draft_side = draft_side  # the views' (the larger) need: see open_rgb

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> dict:
        image = open_rgb(self.image_set.paths[index], self.draft_side)
        return {
            "views": [self.view_transform(image) for _ in range(self.n_views)],
            "clean": self.clean_transform(image),
            "index": index,
            "id": self.image_set.ids[index],
        }
