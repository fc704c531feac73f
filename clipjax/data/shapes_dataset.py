"""clipjax_shapes: a procedurally drawn TFDS dataset for every task (no download).

One example holds 1-3 objects laid out along a row (left / center / right) or a column
(top / center / bottom), so each object's position word is unambiguous and masks never
overlap. Every object has a shape, a colour, a size (small / large) and a texture (solid /
striped / dotted); backgrounds are flat, gradient or noise, in muted low-saturation tones
that never match an object colour.

Features (what the input pipeline reads):

  image          uint8 (S, S, 3), PNG
  captions       5 strings from templates ("a small red circle and a large blue square", ...)
  label          ClassLabel over CLASSNAMES ("red circle", ...): class of the largest object
  tags           uint8 (len(TAGS),) multi-hot over TAGS (shapes, colours, sizes, textures)
  background     ClassLabel over BACKGROUNDS
  objects        Sequence of
    mask         uint8 (S, S, 1), values 0/1, PNG: the pixels of this object (CLIPSeg target)
    phrase       referring expression, "the small red circle on the left"
    shape, color, size, texture    ClassLabels over SHAPES / COLOR_NAMES / SIZES / TEXTURES
    position     ClassLabel over POSITIONS

Held-out combinations (zero-shot generalisation): no object of a (colour, shape) pair in
HELD_OUT is ever drawn in the train split; validation and test draw all 30 pairs uniformly, so
their labels include classes never seen in training. HELD_OUT is a fixed constant (one pair
per shape, five distinct colours), not drawn from the seed.

Determinism: example i of split k is drawn from numpy's PCG64 seeded with (seed, k, i), and
images/masks are PNG-encoded with PIL, so the same config gives the same example bytes.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from clipjax.data.data_dir import preparing, resolve_data_dir
from PIL import Image

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("flat", "gradient", "noise")
CLASSNAMES = tuple(f"{c} {s}" for s in SHAPES for c in COLOR_NAMES)
TAGS = SHAPES + COLOR_NAMES + SIZES + TEXTURES
HELD_OUT = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "cross"),
    ("yellow", "circle"),
    ("purple", "square"),
)
HELD_OUT_CLASSNAMES = tuple(f"{c} {s}" for c, s in HELD_OUT)
PROMPT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "there is a {} in the picture.")
NUM_CAPTIONS = 5
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}

_TRAIN_PAIRS = tuple((c, s) for s in SHAPES for c in COLOR_NAMES if (c, s) not in HELD_OUT)
_ALL_PAIRS = tuple((c, s) for s in SHAPES for c in COLOR_NAMES)
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
               "bottom": "at the bottom", "center": "in the center"}
_NUMBER = {1: "one", 2: "two", 3: "three"}


# ------------------------------------------------------------------------------- drawing
def shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean (size, size) mask of `shape` centred at (cy, cx) with half-extent r pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        w = r * 0.33
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    if shape == "star":  # five points: radius oscillates with the angle
        ang = np.arctan2(dy, dx) + np.pi / 2
        tri = np.abs(((ang * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at points, 0 between
        rad = r * (0.45 + 0.55 * tri)
        return dy * dy + dx * dx <= rad * rad
    raise ValueError(shape)


def _background(rng, s: int, kind: str) -> np.ndarray:
    # Muted, low-saturation tones: far from every object colour.
    base = rng.uniform(90, 170) + rng.uniform(-12, 12, 3)
    if kind == "flat":
        img = np.broadcast_to(base, (s, s, 3)).astype(np.float32)
    elif kind == "gradient":
        other = rng.uniform(60, 200) + rng.uniform(-12, 12, 3)
        t = np.linspace(0.0, 1.0, s, dtype=np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(ang) * t[None, :] + np.sin(ang) * t[:, None]
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        img = base * (1 - ramp[..., None]) + other * ramp[..., None]
    else:  # noise
        img = base + rng.normal(0, 14, (s, s, 1)) + rng.normal(0, 4, (s, s, 3))
    return img.astype(np.float32)


def _texture(rng, s: int, kind: str) -> np.ndarray:
    """(s, s) bool: True where the object's secondary tone shows."""
    if kind == "solid":
        return np.zeros((s, s), bool)
    yy, xx = np.mgrid[0:s, 0:s]
    period = max(3, s // 16)
    if kind == "striped":
        if rng.integers(2):
            return (xx + yy) % (2 * period) < period * 0.8
        return yy % (2 * period) < period * 0.8
    return ((yy % (2 * period)) < period * 0.7) & ((xx % (2 * period)) < period * 0.7)  # dotted


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _describe(o, detail: int) -> str:
    """Object description at a level of detail: 0 shape, 1 colour shape, 2 size colour shape,
    3 size colour texture shape."""
    words = {0: [o["shape"]], 1: [o["color"], o["shape"]],
             2: [o["size"], o["color"], o["shape"]],
             3: [o["size"], o["color"], o["texture"], o["shape"]]}[detail]
    if detail == 3 and o["texture"] == "solid":
        words.remove("solid")
    return " ".join(words)


def _join(parts):
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _captions(objs, background: str, rng) -> list[str]:
    n = len(objs)
    a = lambda d: _join([f"a {_describe(o, d)}" for o in objs])
    caps = [
        a(2),
        "a photo of " + a(1),
        f"{_NUMBER[n]} shape{'s' if n > 1 else ''} on a {background} background: " + a(3),
        _join([f"a {_describe(o, 2)} {POSITION_PHRASES[o['position']]}" for o in objs]),
        "a picture of " + a(0),
    ]
    perm = rng.permutation(len(caps))  # template order varies; content does not
    return [caps[i] for i in perm]


def draw_example(seed: int, split: str, index: int, image_size: int = 64) -> dict:
    """Example `index` of `split`, as the numpy/str dict the builder encodes (plus 'image_array'
    and per-object 'mask_array' for direct use)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    s = image_size
    pairs = _TRAIN_PAIRS if split == "train" else _ALL_PAIRS
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    axis = "row" if rng.integers(2) else "column"
    slots = np.sort(rng.choice(3, size=n, replace=False))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, s, background)
    objs = []
    cell = s / 3.0
    for slot in slots:
        color, shape = pairs[int(rng.integers(len(pairs)))]
        size = SIZES[int(rng.integers(2))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        frac = rng.uniform(0.24, 0.32) if size == "small" else rng.uniform(0.42, 0.48)
        r = frac * cell
        along = (slot + 0.5) * cell + rng.uniform(-1, 1) * (cell / 2 - r) * 0.8
        across = s / 2 + rng.uniform(-1, 1) * s * 0.06
        cy, cx = (across, along) if axis == "row" else (along, across)
        position = ["left", "center", "right"][slot] if axis == "row" else ["top", "center", "bottom"][slot]
        m = shape_mask(shape, s, cy, cx, r)
        if not m.any():  # cannot happen at these sizes; guard anyway
            m[int(cy), int(cx)] = True
        rgb = np.asarray(COLORS[color], np.float32) + rng.normal(0, 8, 3)
        tex = _texture(rng, s, texture) & m
        img[m] = rgb
        img[tex] = rgb * 0.6 if texture == "striped" else np.float32(245.0)
        objs.append({"color": color, "shape": shape, "size": size, "texture": texture,
                     "position": position, "mask_array": m, "area": int(m.sum())})
    for o in objs:
        o["phrase"] = f"the {_describe(o, 2)} {POSITION_PHRASES[o['position']]}"
    largest = max(objs, key=lambda o: o["area"])
    tags = np.zeros(len(TAGS), np.uint8)
    for o in objs:
        for word in (o["shape"], o["color"], o["size"], o["texture"]):
            tags[TAGS.index(word)] = 1
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return {
        "image_array": image,
        "captions": _captions(objs, background, rng),
        "label": CLASSNAMES.index(f"{largest['color']} {largest['shape']}"),
        "tags": tags,
        "background": background,
        "objects": objs,
    }


# ------------------------------------------------------------------------------- builder
@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_train: int = 10_000
    num_validation: int = 1000
    num_test: int = 1000
    seed: int = 0


# ~20 s to build on 2 cores; 1000 test examples hold ~170 of held-out classes
_DEFAULTS = {"image_size": 64, "num_train": 10_000, "num_validation": 1000, "num_test": 1000,
             "seed": 0}


def _config_name(p: dict) -> str:
    if p == _DEFAULTS:
        return "default"
    return "s{image_size}_n{num_train}-{num_validation}-{num_test}_seed{seed}".format(**p)


class ClipjaxShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural multi-object shapes with captions, masks, phrases, tags and labels.

    ClipjaxShapes(data_dir=..., image_size=64, num_train=10000, num_validation=1000,
    num_test=1000, seed=0). Parameters other than the defaults get their own config directory
    (named after the parameters), so differently sized datasets never overwrite each other.
    """

    name = "clipjax_shapes"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release.",
                                     "1.1.0": "Default config 10000/1000/1000 (was 2000/200/200)."}
    BUILDER_CONFIGS: ClassVar[list] = [ShapesConfig(name="default", description="64x64, 10000/1000/1000, seed 0")]

    def __init__(self, *, config=None, **kwargs):
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in _DEFAULTS}
        if params:
            if config is not None:
                raise ValueError("pass either config or the shapes parameters, not both")
            p = {**_DEFAULTS, **{k: int(v) for k, v in params.items()}}
            if p["image_size"] < 24:
                raise ValueError(f"image_size must be >= 24, got {p['image_size']}")
            name = _config_name(p)
            config = "default" if name == "default" else ShapesConfig(name=name, version=self.VERSION, **p)
        super().__init__(config=config, **kwargs)

    def _info(self):
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text(), length=NUM_CAPTIONS),
                "label": tfds.features.ClassLabel(names=CLASSNAMES),
                "tags": tfds.features.Tensor(shape=(len(TAGS),), dtype=np.uint8),
                "background": tfds.features.ClassLabel(names=BACKGROUNDS),
                "objects": tfds.features.Sequence({
                    "mask": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                    "phrase": tfds.features.Text(),
                    "shape": tfds.features.ClassLabel(names=SHAPES),
                    "color": tfds.features.ClassLabel(names=COLOR_NAMES),
                    "size": tfds.features.ClassLabel(names=SIZES),
                    "texture": tfds.features.ClassLabel(names=TEXTURES),
                    "position": tfds.features.ClassLabel(names=POSITIONS),
                }),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/clipjax",
            # what evaluation reads instead of importing this module: zero-shot prompts and
            # the colour-shape pairs held out of the train split
            metadata=tfds.core.MetadataDict(
                prompt_templates=list(PROMPT_TEMPLATES),
                held_out_classnames=list(HELD_OUT_CLASSNAMES),
                held_out_pairs=[list(p) for p in HELD_OUT]),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {
            "train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation", c.num_validation),
            "test": self._generate_examples("test", c.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        c = self.builder_config
        for i in range(count):
            ex = draw_example(c.seed, split, i, c.image_size)
            yield i, {
                "image": _png(ex["image_array"]),
                "captions": ex["captions"],
                "label": ex["label"],
                "tags": ex["tags"],
                "background": ex["background"],
                "objects": [{
                    "mask": _png(o["mask_array"].astype(np.uint8)),  # 2-D -> 1-channel PNG
                    "phrase": o["phrase"],
                    "shape": o["shape"], "color": o["color"], "size": o["size"],
                    "texture": o["texture"], "position": o["position"],
                } for o in ex["objects"]],
            }


def build_shapes(data_dir: str | os.PathLike | None = None, **kwargs) -> ClipjaxShapes:
    """Prepare clipjax_shapes under data_dir (a no-op when already there) and return the builder.

    kwargs: image_size, num_train, num_validation, num_test, seed. Nothing is downloaded.
    Read it with `builder.as_dataset(split="train")` (tf.data over TFRecord files).
    """
    builder = ClipjaxShapes(data_dir=resolve_data_dir(data_dir), **kwargs)
    with preparing(builder.data_dir_root, builder.name):  # one process writes, the others wait
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
