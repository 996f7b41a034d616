"""Named augmentation presets for training views, each with its full parameter list for the record.

    simclr     SimCLR's view (Chen et al. 2020): random resized crop (scale 0.08-1), flip, colour
               jitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2, Gaussian blur p=0.5
    moco-v2    MoCo v2's view (Chen et al. 2020b): crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1
    copy-edit  heavy: AugLy copy edits (the same families that make the benchmark's queries,
               harness/data/edits.py) applied with probability `edit_prob`, then a SimCLR-style
               view with milder crop. Its settings are ours, not from a paper.

The view part is lightly's `SimCLRViewTransform` built from the recorded parameters, so the
parameters in the record are exactly the ones the transform ran with. A preset's `params` holds
every knob (the preset name included); `overrides` may change any of them and nothing else.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import ConfigError

IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

_VIEW_KEYS = (
    "min_scale",
    "hf_prob",
    "vf_prob",
    "rr_prob",
    "rr_degrees",
    "cj_prob",
    "cj_strength",
    "cj_bright",
    "cj_contrast",
    "cj_sat",
    "cj_hue",
    "random_gray_scale",
    "gaussian_blur",
    "sigmas",
)

_SIMCLR_VIEW = {
    "min_scale": 0.08,
    "hf_prob": 0.5,
    "vf_prob": 0.0,
    "rr_prob": 0.0,
    "rr_degrees": None,
    "cj_prob": 0.8,
    "cj_strength": 1.0,
    "cj_bright": 0.8,
    "cj_contrast": 0.8,
    "cj_sat": 0.8,
    "cj_hue": 0.2,
    "random_gray_scale": 0.2,
    "gaussian_blur": 0.5,
    "sigmas": [0.1, 2.0],
}

_PRESETS: dict[str, dict] = {
    "simclr": dict(_SIMCLR_VIEW),
    "moco-v2": {
        **_SIMCLR_VIEW,
        "min_scale": 0.2,
        "cj_bright": 0.4,
        "cj_contrast": 0.4,
        "cj_sat": 0.4,
        "cj_hue": 0.1,
    },
    "copy-edit": {
        **_SIMCLR_VIEW,
        # Copy edits already crop, rotate, recolour and blur: the view on top of them stays mild.
        "min_scale": 0.4,
        "cj_prob": 0.5,
        "cj_bright": 0.4,
        "cj_contrast": 0.4,
        "cj_sat": 0.4,
        "cj_hue": 0.1,
        "gaussian_blur": 0.2,
        "edit_prob": 0.8,
        "edit_strength": 1.0,
        "min_edits": 1,
        "max_edits": 3,
        "edit_families": None,  # None = every family of harness.data.edits.EDIT_FAMILIES
    },
}


@dataclass
class Preset:
    name: str
    transform: Callable  # PIL image -> float tensor (3, image_size, image_size), normalized
    params: dict  # JSON-serializable, the full parameter list, `preset` and `image_size` included


def list_presets() -> list[str]:
    return list(_PRESETS)


class CopyEdit:
    """With probability `prob`, apply `min_edits..max_edits` random AugLy copy-edit families.

    The numpy generator is seeded from torch's RNG, which DataLoader seeds per worker, so views are
    reproducible under `torch.manual_seed` like every torchvision transform (lightly's blur also
    draws from numpy's global RNG, which DataLoader seeds per worker too).
    """

    def __init__(self, settings, prob: float):
        self.settings = settings
        self.prob = prob

    def __call__(self, image):
        import numpy as np
        import torch

        from harness.data.edits import random_edits

        seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = np.random.default_rng(seed)
        if rng.random() >= self.prob:
            return image
        edited, _ = random_edits(image, rng, self.settings)
        return edited

    def __repr__(self) -> str:
        return f"CopyEdit(prob={self.prob}, settings={self.settings})"


def _view_transform(params: dict, image_size: int):
    from lightly.transforms.simclr_transform import SimCLRViewTransform

    kwargs = {key: params[key] for key in _VIEW_KEYS}
    kwargs["sigmas"] = tuple(kwargs["sigmas"])
    return SimCLRViewTransform(input_size=image_size, normalize=IMAGENET_NORMALIZE, **kwargs)


def _check_overrides(name: str, defaults: dict, overrides: dict) -> dict:
    params = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if key not in params:
            raise ConfigError(
                f"augmentation preset {name!r} has no parameter {key!r}; valid: {', '.join(params)}"
            )
        params[key] = list(value) if isinstance(value, tuple) else value
    return params


def build_preset(name: str, image_size: int, overrides: dict | None = None) -> Preset:
    """The named preset at `image_size`, with `overrides` applied (unknown keys are an error)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; valid: {', '.join(_PRESETS)}")
    if image_size < 8:
        raise ConfigError(f"augmentation image_size must be >= 8, got {image_size}")
    params = _check_overrides(name, _PRESETS[name], overrides or {})
    view = _view_transform(params, image_size)
    transform: Callable = view
    if "edit_prob" in params:
        from harness.data.edits import EDIT_FAMILIES, EditSettings

        families = params["edit_families"]
        settings = EditSettings(
            strength=float(params["edit_strength"]),
            min_edits=int(params["min_edits"]),
            max_edits=int(params["max_edits"]),
            families=tuple(families) if families else tuple(EDIT_FAMILIES),
        )
        params["edit_families"] = list(settings.families)
        transform = _Chain([CopyEdit(settings, float(params["edit_prob"])), view])
    record = {"preset": name, "image_size": image_size, **params, "normalize": IMAGENET_NORMALIZE}
    return Preset(name=name, transform=transform, params=record)


def training_source_side(params: dict, image_size: int) -> int | None:
    """The smallest image side at which the preset's tightest crop still spans `image_size`
    pixels: what a reduced-scale JPEG decode (data.decode: draft) must keep for training views.

    The view's random resized crop keeps at least `min_scale` of the area at an aspect ratio up to
    4/3, so at least sqrt(min_scale * 3/4) of a side; the copy edits' crop keeps at least
    (1 - strength/2) * 0.85 of a side (harness/data/edits.py). Their product is the tightest crop;
    the side needed is image_size over it. None when a crop can be arbitrarily small."""
    linear = math.sqrt(params["min_scale"] * 3 / 4)
    families = params.get("edit_families") or ()
    if "edit_prob" in params and params["edit_prob"] > 0 and "crop" in families:
        linear *= max(1 - 0.5 * float(params["edit_strength"]), 0.0) * 0.85
    if linear <= 0:
        return None
    return math.ceil(image_size / linear)


class _Chain:
    def __init__(self, steps: list[Callable]):
        self.steps = steps

    def __call__(self, image):
        for step in self.steps:
            image = step(image)
        return image

    def __repr__(self) -> str:
        return f"Chain({self.steps!r})"


def eval_transform(image_size: int) -> Callable:
    """Evaluation: resize the whole image to a square (no crop, so pads and screenshots keep
    their content) and normalize with ImageNet statistics."""
    return EvalTransform(image_size)


class EvalTransform:
    """PIL image -> normalized float tensor (3, size, size), or its uint8 pixels with
    `normalize=False` (then `normalize_batch` finishes the job on a whole batch).

    The same values as torchvision's v2 ToImage/Resize(antialias)/ToDtype/Normalize chain (PIL's
    bilinear resize is the reference torchvision's antialiasing matches; tests/test_augment.py
    checks the two agree), at a third of the cost: one PIL resize on 8-bit pixels, then a single
    numpy-to-tensor conversion, since on a 2-core machine the loading workers take their time from
    the forward pass. Descriptor extraction ships uint8 pixels out of its workers (a quarter of the
    bytes) and normalizes each batch once, on the device.
    """

    def __init__(self, image_size: int, *, normalize: bool = True):
        self.image_size = image_size
        self.normalize = normalize

    def __call__(self, image):
        import numpy as np
        import torch
        from PIL import Image

        size = (self.image_size, self.image_size)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return normalize_batch(pixels) if self.normalize else pixels

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, normalize={self.normalize})"


def normalize_batch(pixels):
    """uint8 pixels (B, 3, H, W) or one image (3, H, W), on any device -> ImageNet-normalized
    float32: what `eval_transform` gives per image."""
    mean, inv_std = _normalization(pixels.device)
    return (pixels.float() - mean) * inv_std


@functools.lru_cache(maxsize=8)
def _normalization(device):
    """(mean, 1 / std) on the 0-255 scale, shaped (3, 1, 1), built once per device."""
    import torch

    mean = torch.tensor(IMAGENET_NORMALIZE["mean"], device=device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_NORMALIZE["std"], device=device).view(3, 1, 1) * 255
    return mean, 1 / std
