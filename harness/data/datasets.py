"""Torch datasets over an `ImageSet`: decode one file per item, so a DataLoader with workers streams
the split in parallel and no split ever has to sit in memory.

A run lists its benchmark without opening an image (harness/data/layout.py, `check_images=False`),
so the datasets check each image as they decode it: a file that does not decode, a decompression
bomb, and (training images) one smaller than MIN_TRAINING_SIDE. What happens to a bad image is the
dataset's `bad_images`:

- "fail" (data.skip_bad_images off): an InputError naming the file and the way out.
- "drop" (queries and references): the item is None, `collate_kept` leaves it out of its batch, and
  the image gets no descriptor (harness/describe.py; the pipeline drops its ground-truth rows).
- "substitute" (training images): the next good image in id order, wrapping around, stands in for
  it. The item keeps its index and id, so batch sizes, the per-index rows of QK's cache and of the
  memory bank, and the seeded data stream are those of a run without the bad file, and the
  substitute is a function of the files alone (every worker, rank and resumed run picks the same).
  The consequence: the bad image's cache/bank row holds its substitute's features, one duplicate
  negative per bad file.

Skipped images are appended to `skip_log` (a run's skipped_images.tsv; `append_skipped`), since a
count kept here would stay in the DataLoader worker process that found them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate

from harness.data.layout import (
    BAD_IMAGE_MESSAGE,
    ImageSet,
    append_skipped,
    decode_error_reason,
    decode_errors,
    too_small_reason,
)
from harness.errors import InputError

BadImages = Literal["fail", "drop", "substitute"]
BAD_IMAGES = ("fail", "drop", "substitute")

# Integer modes PNG uses for 16-bit grayscale; PIL's convert("RGB") clips them at 255 (a white
# image), so they are rescaled to 8 bits first.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImage(Exception):
    """An image that cannot be used, and why (`reason`, the words of harness/data/layout.py)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GRAY_MODES:
        # The 16-bit range is what these modes hold in PNG files (mode "I" included).
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    # Alpha is dropped (not composited): copy edits keep the RGB under transparent pixels.
    return image.convert("RGB")


def decode_rgb(path: Path, draft_side: int | None = None, min_side: int = 1) -> Image.Image:
    """`open_rgb`, raising BadImage for a file that cannot be used."""
    try:
        with Image.open(path) as image:
            # The file's own size: a draft decode may shrink it (never below draft_side).
            small = too_small_reason(image.size, min_side)
            if small is not None:
                raise BadImage(path, small)
            if draft_side is not None and image.format == "JPEG":
                image.draft(None, (draft_side, draft_side))
            return _to_rgb(image)
    except decode_errors() as err:
        raise BadImage(path, decode_error_reason(err)) from err


def open_rgb(path: Path, draft_side: int | None = None, min_side: int = 1) -> Image.Image:
    """Decode `path` as 8-bit RGB; a bad file (one that does not decode, a decompression bomb, one
    under `min_side` pixels a side) is an InputError naming it and the way out.

    `draft_side`: a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps
    both sides >= draft_side (libjpeg skips the finer coefficients: a 1024x768 file decodes
    several times faster at 1/8). None, or any other format: the full image."""
    try:
        return decode_rgb(path, draft_side, min_side)
    except BadImage as bad:
        raise InputError(BAD_IMAGE_MESSAGE.format(path=path, reason=bad.reason)) from (
            bad.__cause__ or bad
        )


def collate_kept(items: list):
    """default_collate over the items a "drop" dataset kept; None when it dropped them all."""
    kept = [item for item in items if item is not None]
    return default_collate(kept) if kept else None


class _Images(Dataset):
    """Decoding with the bad-image policy of the module doc."""

    def __init__(
        self,
        image_set: ImageSet,
        draft_side: int | None,
        min_side: int,
        bad_images: BadImages,
        skip_log: Path | None,
    ):
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
        self.image_set = image_set
        self.draft_side = draft_side  # see open_rgb
        self.min_side = min_side
        self.bad_images = bad_images
        self.skip_log = None if skip_log is None else Path(skip_log)
        # Indices found bad by this process (each worker has its own copy): never decoded again,
        # logged once.
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.image_set)

    def _decode(self, index: int) -> Image.Image | None:
        path = self.image_set.paths[index]
        if self.bad_images == "fail":
            return open_rgb(path, self.draft_side, self.min_side)
        if index in self._bad:
            return None
        try:
            return decode_rgb(path, self.draft_side, self.min_side)
        except BadImage as bad:
            self._bad[index] = bad.reason
            if self.skip_log is not None:
                append_skipped(self.skip_log, path, bad.reason)
            return None

    def _image(self, index: int) -> Image.Image | None:
        """Item `index`'s image; None when a "drop" dataset skips it."""
        image = self._decode(index)
        if image is not None or self.bad_images == "drop":
            return image
        n = len(self.image_set)
        for step in range(1, n):  # "substitute": the next good image, wrapping around
            image = self._decode((index + step) % n)
            if image is not None:
                return image
        directory = self.image_set.paths[index].parent
        raise InputError(f"{directory}: none of its {n} images can be used (every one skipped)")


class ImageDataset(_Images):
    """Items are `(transform(image), index, id)`, for descriptor extraction and the training-set
    encodings; a "drop" dataset's item is None for a bad image (load it with `collate_kept`)."""

    def __init__(
        self,
        image_set: ImageSet,
        transform: Callable,
        draft_side: int | None = None,
        *,
        min_side: int = 1,
        bad_images: BadImages = "fail",
        skip_log: Path | None = None,
    ):
        super().__init__(image_set, draft_side, min_side, bad_images, skip_log)
        self.transform = transform

    def __getitem__(self, index: int):
        image = self._image(index)
        if image is None:
            return None
        return self.transform(image), index, self.image_set.ids[index]


class TrainingDataset(_Images):
    """Items are `{"views": [n_views augmented tensors], "clean": tensor, "index": i, "id": id}`.

    The clean image (evaluation transform only) comes with every item because some methods use it
    (QK iteration's cached keys, memory-bank initialisation) and decoding twice would cost more.
    `bad_images` is "fail" or "substitute" (a training batch never loses an item).
    """

    def __init__(
        self,
        image_set: ImageSet,
        view_transform: Callable,
        clean_transform: Callable,
        n_views: int = 2,
        draft_side: int | None = None,
        *,
        min_side: int = 1,
        bad_images: BadImages = "fail",
        skip_log: Path | None = None,
    ):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        if bad_images == "drop":
            raise ValueError("a training batch cannot drop items: use bad_images='substitute'")
        # draft_side: the views' (the larger) need
        super().__init__(image_set, draft_side, min_side, bad_images, skip_log)
        self.view_transform = view_transform
        self.clean_transform = clean_transform
        self.n_views = n_views

    def __getitem__(self, index: int) -> dict:
        image = self._image(index)
        return {
            "views": [self.view_transform(image) for _ in range(self.n_views)],
            "clean": self.clean_transform(image),
            "index": index,
            "id": self.image_set.ids[index],
        }
