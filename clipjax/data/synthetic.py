"""Procedurally drawn shapes with captions: data that needs no download.

Each image holds one shape (class = colour x shape) at a random size and position on a noisy
background; captions come from templates. Deterministic from (seed, index), so any process
can draw its own shard of a stream without coordination.
"""

from __future__ import annotations

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
CAPTION_TEMPLATES = (
    "a {c} {s}",
    "a photo of a {c} {s}",
    "a {size} {c} {s}",
    "a {c} {s} on a gray background",
    "there is a {c} {s} in the picture",
)
CLASSNAMES = tuple(f"{c} {s}" for s in SHAPES for c in COLORS)


def _mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        w = r * 0.35
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    raise ValueError(shape)


def draw_example(seed: int, index: int, image_size: int = 32):
    """-> (uint8 image (S, S, 3), class index, caption)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSNAMES)))
    color_name, shape = CLASSNAMES[label].split(" ")
    s = image_size
    bg = rng.integers(70, 170)
    img = np.clip(bg + rng.normal(0, 12, (s, s, 3)), 0, 255)
    r = rng.uniform(0.18, 0.35) * s
    cy, cx = rng.uniform(r, s - r, 2)
    m = _mask(shape, s, cy, cx, r)
    color = np.array(COLORS[color_name], np.float32) + rng.normal(0, 10, 3)
    img[m] = np.clip(color, 0, 255)
    size_word = "small" if r < 0.26 * s else "large"
    tpl = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    caption = tpl.format(c=color_name, s=shape, size=size_word)
    return img.astype(np.uint8), label, caption


def draw_batch(seed: int, start: int, count: int, image_size: int = 32):
    """Examples start .. start+count-1 -> (uint8 images (B,S,S,3), labels (B,), captions)."""
    imgs, labels, caps = zip(*(draw_example(seed, start + i, image_size) for i in range(count)))
    return np.stack(imgs), np.array(labels, np.int32), list(caps)
