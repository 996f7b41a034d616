"""Augmentation presets: shapes, recorded parameters, overrides, errors, reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from harness.augment import build_preset, eval_transform, list_presets
from harness.data.scenes import render_scene
from harness.errors import ConfigError


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return render_scene(np.random.default_rng(0), 80)


@pytest.mark.parametrize("name", ["simclr", "moco-v2", "copy-edit"])
def test_preset_gives_normalized_square_tensor(name, image):
    preset = build_preset(name, 48)
    out = preset.transform(image)
    assert out.shape == (3, 48, 48)
    assert out.dtype == torch.float32
    # ImageNet normalization maps [0, 1] pixels into about [-2.2, 2.7].
    assert out.min() >= -2.2 and out.max() <= 2.7
    assert json.loads(json.dumps(preset.params)) == preset.params
    assert preset.params["preset"] == name and preset.params["image_size"] == 48


def test_all_named_presets_listed():
    assert {"simclr", "moco-v2", "copy-edit"} <= set(list_presets())


def test_presets_differ_in_recorded_parameters():
    params = {name: build_preset(name, 32).params for name in list_presets()}
    assert params["simclr"]["min_scale"] != params["moco-v2"]["min_scale"]
    assert "edit_families" in params["copy-edit"] and params["copy-edit"]["edit_families"]


def test_override_changes_the_recorded_value_and_the_transform(image):
    preset = build_preset(
        "simclr",
        32,
        {
            "min_scale": 1.0,
            "hf_prob": 0.0,
            "cj_prob": 0.0,
            "random_gray_scale": 0.0,
            "gaussian_blur": 0.0,
        },
    )
    assert preset.params["min_scale"] == 1.0
    # With every random part disabled except the aspect ratio of a full-area crop (which is then
    # forced back to 1), the view is deterministic: two calls agree.
    torch.manual_seed(1)
    a = preset.transform(image)
    b = preset.transform(image)
    assert torch.allclose(a, b, atol=1e-5)


def test_unknown_preset_and_key_name_the_valid_ones():
    with pytest.raises(ConfigError, match="simclr"):
        build_preset("nope", 32)
    with pytest.raises(ConfigError, match="min_scale"):
        build_preset("simclr", 32, {"min_scael": 0.5})
    with pytest.raises(ConfigError, match="crop"):
        build_preset("copy-edit", 32, {"edit_families": ["crop", "teleport"]})


def test_views_are_reproducible_under_the_torch_and_numpy_seeds(image):
    # lightly's blur draws from numpy's global RNG; DataLoader seeds both per worker.
    preset = build_preset("copy-edit", 32)
    torch.manual_seed(7)
    np.random.seed(7)
    first = [preset.transform(image) for _ in range(4)]
    torch.manual_seed(7)
    np.random.seed(7)
    second = [preset.transform(image) for _ in range(4)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])


def test_copy_edit_restricted_families_are_used(image):
    # Only "pad" with probability 1: a padded image has a solid border, so the view differs from
    # the same view settings with edits off.
    with_pad = build_preset(
        "copy-edit",
        32,
        {"edit_prob": 1.0, "edit_families": ["pad"], "min_edits": 1, "max_edits": 1},
    )
    assert with_pad.params["edit_families"] == ["pad"]
    without = build_preset("copy-edit", 32, {"edit_prob": 0.0})
    torch.manual_seed(3)
    a = with_pad.transform(image)
    torch.manual_seed(3)
    b = without.transform(image)
    assert not torch.equal(a, b)


def test_eval_transform_resizes_without_cropping():
    # A left half black / right half white image stays half and half after the resize.
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, 30:] = 255
    out = eval_transform(16)(Image.fromarray(pixels))
    assert out.shape == (3, 16, 16)
    left, right = out[:, :, :7].mean(), out[:, :, 9:].mean()
    assert left < -1.5 and right > 1.5


@pytest.mark.parametrize("size", [(60, 30), (97, 131), (64, 64), (20, 12)])
def test_eval_transform_matches_torchvision_chain(size):
    # The hand-written evaluation transform must give torchvision's values (resize with
    # antialiasing, then ImageNet normalization), whether it shrinks, enlarges or keeps the size.
    from torchvision.transforms import v2

    from harness.augment import IMAGENET_NORMALIZE

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    reference = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((64, 64), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(**IMAGENET_NORMALIZE),
        ]
    )(image)
    ours = eval_transform(64)(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, 64, 64)
    # torchvision rounds its resized uint8 like PIL does: at most one grey level apart.
    assert (ours - reference).abs().max() <= 1 / 255 / 0.224 + 1e-5
    # Grayscale and palette images come out as three identical / converted channels.
    gray = eval_transform(64)(image.convert("L"))
    assert torch.allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-5)


def test_uint8_pixels_normalized_per_batch_equal_the_per_image_transform():
    from harness.augment import EvalTransform, normalize_batch

    rng = np.random.default_rng(5)
    images = [
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)) for i in range(4)
    ]
    pixels = torch.stack([EvalTransform(32, normalize=False)(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, 32, 32)
    per_image = torch.stack([eval_transform(32)(image) for image in images])
    torch.testing.assert_close(normalize_batch(pixels), per_image)
