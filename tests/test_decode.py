"""Decoding at the size that is used (data.decode: draft): JPEGs at reduced DCT scale, never
below what the transform needs, within a stated pixel tolerance of the full decode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from harness.augment import EvalTransform, build_preset, training_source_side
from harness.config import resolve_config
from harness.data.datasets import open_rgb

# The stated tolerance (docs/data.md): after the evaluation transform, the draft decode of a
# 1024x768 JPEG differs from the full decode by at most this mean and this largest difference,
# in 8-bit levels.
MEAN_TOLERANCE, MAX_TOLERANCE = 2.0, 8


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 1024x768 quality-90 JPEG with photo-like content (smooth shapes and fine texture)."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(low).resize((1024, 768), Image.BICUBIC)).astype(np.int16)
    pixels = (pixels + rng.integers(-12, 12, pixels.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("jpeg") / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.mark.parametrize("size", [64, 224])
def test_draft_decode_stays_within_tolerance_of_the_full_decode(photo, size):
    transform = EvalTransform(size, normalize=False)
    full = transform(open_rgb(photo)).float()
    draft = transform(open_rgb(photo, size)).float()
    difference = (full - draft).abs()
    assert float(difference.mean()) <= MEAN_TOLERANCE and float(difference.max()) <= MAX_TOLERANCE
    assert not np.array_equal(full.numpy(), draft.numpy())  # it did decode at reduced scale


@pytest.mark.parametrize("side, expected", [(64, (128, 96)), (224, (512, 384)), (275, (512, 384))])
def test_draft_keeps_both_sides_at_least_the_needed_side(photo, side, expected):
    assert open_rgb(photo, side).size == expected  # the smallest DCT scale >= side
    assert open_rgb(photo).size == (1024, 768)


def test_png_and_small_jpeg_decode_in_full(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=90)
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "a.png", 8)), pixels)
    # The mini-DISC's 96 px JPEGs at 64 px: half scale would be 48 px, so nothing changes.
    assert np.array_equal(
        np.asarray(open_rgb(tmp_path / "a.jpg", 64)), np.asarray(open_rgb(tmp_path / "a.jpg"))
    )


def test_training_views_keep_the_tightest_crops_pixels():
    params = build_preset("copy-edit", 64).params
    # sqrt(0.4 * 3/4) of a side from the view's crop, (1 - 1/2) * 0.85 from the copy edits' crop.
    tightest = math.sqrt(0.4 * 0.75) * 0.5 * 0.85
    assert training_source_side(params, 64) == math.ceil(64 / tightest) == 275
    simclr = build_preset("simclr", 64).params  # no copy edits: the view's crop alone
    assert training_source_side(simclr, 64) == math.ceil(64 / math.sqrt(0.08 * 0.75))
    no_crop_floor = build_preset("copy-edit", 64, {"edit_strength": 2.0}).params
    assert training_source_side(no_crop_floor, 64) is None  # a crop can be arbitrarily small


def test_decode_is_a_protocol_option():
    assert resolve_config("qk").data.decode == "draft"
    assert resolve_config("qk", overrides=["data.decode=full"]).data.decode == "full"
