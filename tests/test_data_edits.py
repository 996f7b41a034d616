"""Copy-edit families and procedural scenes: determinism, effect, validation."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.edits import EDIT_FAMILIES, EditSettings, apply_edit, random_edits
from harness.data.scenes import render_scene
from harness.errors import ConfigError


@pytest.fixture(scope="module")
def scene():
    return render_scene(np.random.default_rng(42), 64)


def test_scene_is_a_function_of_the_seed():
    a = np.asarray(render_scene(np.random.default_rng(5), 40))
    b = np.asarray(render_scene(np.random.default_rng(5), 40))
    c = np.asarray(render_scene(np.random.default_rng(6), 40))
    assert a.shape == (40, 40, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("family", list(EDIT_FAMILIES))
def test_each_family_is_deterministic_and_changes_the_image(family, scene):
    first = apply_edit(family, scene, np.random.default_rng(1))
    again = apply_edit(family, scene, np.random.default_rng(1))
    assert first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    changed = first.size != scene.size or not np.array_equal(np.asarray(first), np.asarray(scene))
    assert changed, f"{family} left the image untouched"


def test_strength_makes_edits_harder(scene):
    # Mean pixel change of a blur grows with strength (same seed, same draw otherwise).
    original = np.asarray(scene, np.float32)

    def change(strength):
        out = apply_edit("blur", scene, np.random.default_rng(3), strength)
        return np.abs(np.asarray(out, np.float32) - original).mean()

    assert change(0.0) < change(1.0) < change(3.0)


def test_random_edits_respects_counts_and_families(scene):
    settings = EditSettings(min_edits=2, max_edits=3, families=("blur", "jpeg", "pad", "flip"))
    counts = set()
    for seed in range(20):
        _, names = random_edits(scene, np.random.default_rng(seed), settings)
        assert len(set(names)) == len(names)
        assert set(names) <= set(settings.families)
        counts.add(len(names))
    assert counts == {2, 3}


def test_bad_settings_name_the_problem():
    with pytest.raises(ConfigError, match="teleport.*valid: crop"):
        EditSettings(families=("crop", "teleport"))
    with pytest.raises(ConfigError, match="min_edits"):
        EditSettings(min_edits=3, max_edits=1)
    with pytest.raises(ConfigError, match="unknown edit family"):
        apply_edit("meme", render_scene(np.random.default_rng(0), 16), np.random.default_rng(0))
