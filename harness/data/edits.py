"""Copy edits: the AugLy transformations that turn an image into a query, in one place.

Used by the generated mini-DISC (`harness.data.synth`) to make queries and by the "copy-edit"
augmentation preset (`harness.augment`) to make training views, so both see the same families.

Every family is `edit(image, rng, strength) -> image`: all randomness comes from `rng` (a
`numpy.random.Generator`), so an edit is fixed by its seed whatever process runs it. `strength`
scales how hard the edit is (0 = barely visible, 1 = the default, >1 harder); the ranges below are
our choice, picked so that copies stay recognisable but are not trivial to match.

Two AugLy functions are replaced: `perspective_transform` (uses `np.float`, gone in NumPy 2) by a
PIL perspective warp here, and `meme_format`, which is not used: under Pillow >= 10 it calls the removed
`FreeTypeFont.getsize_multiline` and raises. The `text` family (caption-like overlay_text) and the
`pad` family (a coloured border) cover what a meme caption does to an image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import ConfigError


@lru_cache(maxsize=1)
def _assets() -> Path:
    import augly

    return Path(augly.__file__).parent / "assets"


@lru_cache(maxsize=1)
def _emoji_files() -> tuple[str, ...]:
    return tuple(str(p) for p in sorted((_assets() / "twemojis").rglob("*.png")))


@lru_cache(maxsize=1)
def _text_fonts() -> tuple[str, ...]:
    # overlay_text indexes characters through the .pkl charset that AugLy ships beside each font.
    fonts = sorted((_assets() / "fonts").glob("*.ttf"))
    return tuple(str(f) for f in fonts if f.with_suffix(".pkl").exists())


@lru_cache(maxsize=64)
def _charset_size(font_file: str) -> int:
    import pickle

    with open(Path(font_file).with_suffix(".pkl"), "rb") as handle:
        return len(pickle.load(handle))


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _clamp01(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def crop(image, rng, strength):
    import augly.image as imaugs

    side = rng.uniform(_clamp01(1 - 0.5 * strength), 1.0)
    side_x = side * rng.uniform(0.85, 1.0)
    side_y = side * rng.uniform(0.85, 1.0)
    x1, y1 = rng.uniform(0, 1 - side_x), rng.uniform(0, 1 - side_y)
    return imaugs.crop(image, x1=x1, y1=y1, x2=x1 + side_x, y2=y1 + side_y)


def rotate(image, rng, strength):
    import augly.image as imaugs

    degrees = rng.uniform(5, 5 + 25 * strength) * rng.choice([-1, 1])
    return imaugs.rotate(image, degrees=float(degrees))


def flip(image, rng, strength):
    import augly.image as imaugs

    return imaugs.vflip(image) if rng.random() < 0.25 else imaugs.hflip(image)


def color(image, rng, strength):
    import augly.image as imaugs

    if rng.random() < 0.2:
        return imaugs.grayscale(image)
    spread = 0.5 * strength
    return imaugs.color_jitter(
        image,
        brightness_factor=rng.uniform(max(0.2, 1 - spread), 1 + spread),
        contrast_factor=rng.uniform(max(0.2, 1 - spread), 1 + spread),
        saturation_factor=rng.uniform(max(0.0, 1 - 2 * spread), 1 + 2 * spread),
    )


def blur(image, rng, strength):
    import augly.image as imaugs

    scale = max(image.size) / 128
    return imaugs.blur(image, radius=float(rng.uniform(0.5, 0.5 + 2.0 * strength) * scale))


def jpeg(image, rng, strength):
    import augly.image as imaugs

    lowest = int(round(max(5, 60 - 50 * strength)))
    return imaugs.encoding_quality(image, quality=int(rng.integers(lowest, 71)))


def pixelize(image, rng, strength):
    import augly.image as imaugs

    ratio = rng.uniform(max(0.1, 1 - 0.7 * strength), max(0.15, 1 - 0.3 * strength))
    return imaugs.pixelization(image, ratio=float(ratio))


def noise(image, rng, strength):
    import augly.image as imaugs

    var = rng.uniform(0.002, 0.002 + 0.02 * strength)
    return imaugs.random_noise(image, var=float(var), seed=int(rng.integers(2**31)))


# Fonts whose shaping fails (RuntimeError from raqm_layout) on some characters of their own
# AugLy charset; left out so a query is never lost to a font bug.
_BROKEN_FONTS = ("OstrichSans", "PlayfairDisplay")
_FALLBACK_FONT = "Raleway-ExtraBold.ttf"


def text(image, rng, strength):
    import augly.image as imaugs

    fonts = [f for f in _text_fonts() if not Path(f).name.startswith(_BROKEN_FONTS)]
    font_file = fonts[int(rng.integers(len(fonts)))]
    n_chars = int(rng.integers(3, 12))
    kwargs = dict(
        font_size=float(rng.uniform(0.1, 0.1 + 0.15 * strength)),
        opacity=float(rng.uniform(0.7, 1.0)),
        color=_color(rng),
        x_pos=float(rng.uniform(0, 0.5)),
        y_pos=float(rng.uniform(0, 0.8)),
    )
    chars = rng.integers(0, _charset_size(font_file), size=n_chars).tolist()
    try:
        return imaugs.overlay_text(image, text=chars, font_file=font_file, **kwargs)
    except RuntimeError:
        # Rare glyphs still trip the shaper; a Latin font with in-range characters never does.
        fallback = str(_assets() / "fonts" / _FALLBACK_FONT)
        chars = [c % _charset_size(fallback) for c in chars]
        return imaugs.overlay_text(image, text=chars, font_file=fallback, **kwargs)


def emoji(image, rng, strength):
    import augly.image as imaugs

    emojis = _emoji_files()
    size = rng.uniform(0.15, 0.15 + 0.25 * strength)
    return imaugs.overlay_emoji(
        image,
        emoji_path=emojis[int(rng.integers(len(emojis)))],
        opacity=float(rng.uniform(0.7, 1.0)),
        emoji_size=float(size),
        x_pos=float(rng.uniform(0, 1 - size)),
        y_pos=float(rng.uniform(0, 1 - size)),
    )


def screenshot(image, rng, strength):
    """The image pasted into a web or phone screenshot, then cropped around it with some UI.

    AugLy's templates are 1200x736 / 414x736 with the picture in a small box; the crop (ours) keeps
    the box plus a margin of up to 40% of its size on each side, as a screenshot of a post would.
    """
    import json

    import augly.image as imaugs

    template_dir = _assets() / "screenshot_templates"
    template = "web.png" if rng.random() < 0.5 else "mobile.png"
    out = imaugs.overlay_onto_screenshot(
        image,
        template_filepath=str(template_dir / template),
        template_bboxes_filepath=str(template_dir / "bboxes.json"),
        crop_src_to_fit=bool(rng.random() < 0.5),
    )
    x0, y0, x1, y1 = json.loads((template_dir / "bboxes.json").read_text())[template]
    w, h = x1 - x0, y1 - y0
    left, top, right, bottom = rng.uniform(0, 0.4 * min(strength, 1.5), 4) * [w, h, w, h]
    box = (
        max(0, int(x0 - left)),
        max(0, int(y0 - top)),
        min(out.width, int(x1 + right)),
        min(out.height, int(y1 + bottom)),
    )
    out = out.crop(box)
    longest = max(image.size)
    factor = longest / max(out.size)
    return out.resize((max(1, round(out.width * factor)), max(1, round(out.height * factor))))


def overlay(image, rng, strength):
    """The image pasted, smaller, onto another (procedural) picture."""
    import augly.image as imaugs

    from harness.data.scenes import render_scene

    background = render_scene(rng, max(image.size))
    size = rng.uniform(max(0.3, 1 - 0.45 * strength), 0.9)
    return imaugs.overlay_onto_background_image(
        image,
        background_image=background,
        overlay_size=float(size),
        x_pos=float(rng.uniform(0, 1 - size)),
        y_pos=float(rng.uniform(0, 1 - size)),
    )


def pad(image, rng, strength):
    import augly.image as imaugs

    return imaugs.pad(
        image,
        w_factor=float(rng.uniform(0.02, 0.02 + 0.25 * strength)),
        h_factor=float(rng.uniform(0.02, 0.02 + 0.25 * strength)),
        color=_color(rng),
    )


def _perspective_coeffs(source: np.ndarray, target: np.ndarray) -> list[float]:
    """PIL's 8 perspective coefficients mapping output corners `target` to input corners `source`."""
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, float), source.reshape(-1)).tolist()


def perspective(image, rng, strength):
    """Each corner moved by a random offset (Gaussian, sigma a fraction of the side).

    Written with PIL rather than AugLy: AugLy 1.0's `perspective_transform` uses the `np.float`
    alias that NumPy 2 removed, so it raises.
    """
    w, h = image.size
    sigma = rng.uniform(0.02, 0.02 + 0.08 * strength) * max(w, h)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    moved = corners + rng.normal(0, sigma, corners.shape)
    coeffs = _perspective_coeffs(corners, moved)
    return image.transform((w, h), Image.PERSPECTIVE, coeffs, Image.BICUBIC)


EditFn = Callable[[Image.Image, np.random.Generator, float], Image.Image]

EDIT_FAMILIES: dict[str, EditFn] = {
    "crop": crop,
    "rotate": rotate,
    "flip": flip,
    "color": color,
    "blur": blur,
    "jpeg": jpeg,
    "pixelize": pixelize,
    "noise": noise,
    "text": text,
    "emoji": emoji,
    "screenshot": screenshot,
    "overlay": overlay,
    "pad": pad,
    "perspective": perspective,
}

# Families that change where the content sits go first, so later overlays (text, emoji) land on
# top of the moved image as they would when someone edits a re-posted picture.
_ORDER = {name: i for i, name in enumerate(EDIT_FAMILIES)}


@dataclass(frozen=True)
class EditSettings:
    """How queries (or copy-edit training views) are edited. All fields are recorded."""

    strength: float = 1.0
    min_edits: int = 1
    max_edits: int = 3
    families: tuple[str, ...] = tuple(EDIT_FAMILIES)

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in EDIT_FAMILIES]
        if unknown:
            raise ConfigError(
                f"unknown edit family {', '.join(unknown)}; valid: {', '.join(EDIT_FAMILIES)}"
            )
        if not self.families:
            raise ConfigError("edit families: at least one family is needed")
        if not 1 <= self.min_edits <= self.max_edits:
            raise ConfigError(
                f"edits per image: need 1 <= min_edits <= max_edits, got {self.min_edits}..{self.max_edits}"
            )
        if self.strength < 0:
            raise ConfigError(f"edit strength must be >= 0, got {self.strength}")


def apply_edit(name: str, image: Image.Image, rng: np.random.Generator, strength: float = 1.0):
    try:
        edit = EDIT_FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown edit family {name!r}; valid: {', '.join(EDIT_FAMILIES)}"
        ) from None
    return edit(image, rng, strength).convert("RGB")


def random_edits(
    image: Image.Image, rng: np.random.Generator, settings: EditSettings = EditSettings()
) -> tuple[Image.Image, list[str]]:
    """Apply `min_edits..max_edits` distinct families drawn from `settings.families`.

    Returns the edited RGB image and the family names applied, in order.
    """
    high = min(settings.max_edits, len(settings.families))
    count = int(rng.integers(min(settings.min_edits, high), high + 1))
    chosen = rng.choice(len(settings.families), size=count, replace=False)
    names = sorted((settings.families[i] for i in chosen), key=_ORDER.__getitem__)
    image = image.convert("RGB")
    for name in names:
        image = apply_edit(name, image, rng, settings.strength)
    return image, names
