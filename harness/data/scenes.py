"""Procedural scenes: the "photos" of the generated mini-DISC.

Each scene is a function of one `numpy.random.Generator`, so an image is fixed by its seed and can
be re-rendered anywhere (a worker renders a reference again to make its copy instead of reading
the file back). A scene stacks a background (gradient, smooth noise field or periodic texture),
a few dozen random continuous parameters' worth of shapes and lines, sometimes a word of text,
and fine grain noise: two scenes agree on nothing, so references are never near-duplicates.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@lru_cache(maxsize=1)
def _font_files() -> tuple[Path, ...]:
    import augly

    fonts = Path(augly.__file__).parent / "assets" / "fonts"
    # Symbol fonts (dingbats, icon sets) draw boxes or pictograms; text scenes want letters.
    excluded = ("Dingbats", "Entypo", "fontawesome", "Symbol", "Noto")
    return tuple(
        f for f in sorted(fonts.glob("*.ttf")) if not any(word in f.name for word in excluded)
    )


@lru_cache(maxsize=256)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_files()[index]), size)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3) in [0, 255]."""
    kind = rng.integers(0, 4)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:  # linear gradient at a random angle
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xs + np.sin(angle) * ys + 1.5) / 3.0
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # radial gradient around a random centre
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        t = np.clip(t / rng.uniform(0.4, 1.2), 0, 1)
    elif kind == 2:  # smooth noise field: a small random grid upsampled bicubically
        cells = int(rng.integers(2, 7))
        grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        field = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        return np.asarray(field, dtype=np.float32)
    else:  # periodic texture: a sum of two oriented sinusoids
        t = np.zeros_like(xs)
        for _ in range(2):
            angle = rng.uniform(0, np.pi)
            freq = rng.uniform(2, 12)
            phase = rng.uniform(0, 2 * np.pi)
            t += np.sin(2 * np.pi * freq * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
        t = (t + 2) / 4
    return c0 + (c1 - c0) * t[..., None]


def _draw_shapes(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    for _ in range(int(rng.integers(3, 10))):
        kind = rng.integers(0, 4)
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        box = [x0, y0, x0 + w, y0 + h]
        fill = _random_color(rng)
        outline = _random_color(rng) if rng.random() < 0.5 else None
        width = int(rng.integers(1, max(2, size // 24)))
        if kind == 0:
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        elif kind == 1:
            draw.rectangle(box, fill=fill, outline=outline, width=width)
        elif kind == 2:
            n = int(rng.integers(3, 7))
            points = rng.uniform(-0.1, 1.1, (n, 2)) * size
            draw.polygon([tuple(p) for p in points], fill=fill, outline=outline)
        else:
            points = rng.uniform(0, 1, (int(rng.integers(2, 5)), 2)) * size
            draw.line([tuple(p) for p in points], fill=fill, width=width * 2)


def _draw_text(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    letters = string.ascii_letters + string.digits
    word = "".join(rng.choice(list(letters), size=int(rng.integers(2, 8))))
    font = _font(
        int(rng.integers(0, len(_font_files()))), max(8, int(size * rng.uniform(0.12, 0.3)))
    )
    xy = tuple(rng.uniform(0, 0.6, 2) * size)
    draw.text(xy, word, fill=_random_color(rng), font=font)


def render_scene(rng: np.random.Generator, size: int) -> Image.Image:
    """A random RGB scene of `size` x `size` pixels, fully determined by `rng`'s state."""
    pixels = _background(rng, size)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    _draw_shapes(rng, draw, size)
    if rng.random() < 0.4:
        _draw_text(rng, draw, size)
    grain = rng.uniform(0, 8)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, grain, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
