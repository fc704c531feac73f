"""clipjax_shapes scenes as short videos with ground truth: objects appear, move and leave.

One scene (seeded, deterministic) on one clipjax_shapes background:

  main object    a (colour, shape) visible from `enter` to `exit` (3-5 s of an 8 s video),
                 moving in a straight line while visible: the video's label, and the object
                 a text query looks for (its span is the localisation truth)
  distractors    0-2 other objects, each of a colour AND a shape different from the main
                 object's, each visible 1.5-2.5 s, possibly overlapping the main object's span
  empty stretch  wherever nothing is visible (there is always some: before, between, after)

The main object is always the longest-visible object, so "what is this video of" has one answer.
Frames are drawn with the clipjax_shapes generator's own shapes, colours, textures and
backgrounds (clipjax.data.shapes_dataset), so a CLIP trained on clipjax_shapes images sees the
same visual world. `write_scene` encodes a scene as H.264 MP4 with PyAV and writes its ground
truth beside it (`<name>.json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from clipjax.data.shapes_dataset import (BACKGROUNDS, COLOR_NAMES, COLORS, SHAPES, SIZES, TEXTURES, _background,
                                         _texture, shape_mask)

ALL_PAIRS = tuple((c, s) for s in SHAPES for c in COLOR_NAMES)


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str
    texture: str
    enter: float  # seconds: first instant the object is visible
    exit: float  # seconds: the object is gone from this instant on
    start_xy: tuple  # (x, y) centre at `enter`, pixels
    end_xy: tuple  # (x, y) centre at `exit`
    radius: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def visible(self, t: float) -> bool:
        return self.enter <= t < self.exit

    def centre(self, t: float) -> tuple[float, float]:
        a = (t - self.enter) / max(self.exit - self.enter, 1e-6)
        return tuple(float(s + a * (e - s)) for s, e in zip(self.start_xy, self.end_xy))


@dataclass
class Scene:
    seed: int
    index: int
    size: int
    fps: int
    duration: float
    background: str
    objects: list = field(default_factory=list)  # SceneObject; objects[0] is the main object

    @property
    def main(self) -> SceneObject:
        return self.objects[0]

    @property
    def label(self) -> str:
        return self.main.name

    def ground_truth(self) -> dict:
        return dict(seed=self.seed, index=self.index, size=self.size, fps=self.fps, duration=self.duration,
                    background=self.background, label=self.label,
                    span=[self.main.enter, self.main.exit],
                    objects=[dict(asdict(o), name=o.name) for o in self.objects])


def _path(rng, size: int, radius: float) -> tuple[tuple, tuple]:
    """A straight path across the frame: start and end centres, at least a third of the frame
    apart, each keeping the whole object inside."""
    lo, hi = radius + 1, size - radius - 1
    while True:
        a, b = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
        if np.hypot(*(a - b)) >= size / 3:
            return tuple(a.tolist()), tuple(b.tolist())


def make_scene(seed: int, index: int, main_pair: tuple | None = None, size: int = 64, fps: int = 8,
               duration: float = 8.0, distractor_pairs=None) -> Scene:
    """Scene `index` of `seed`. `main_pair` fixes the main (colour, shape) (drawn from all 30
    otherwise); `distractor_pairs` restricts what distractors may be (they always differ from
    the main object in both colour and shape)."""
    rng = np.random.default_rng([seed, 7919, index])
    if main_pair is None:
        main_pair = ALL_PAIRS[int(rng.integers(len(ALL_PAIRS)))]

    def snap(t):  # times on the frame grid, so ground truth and frames agree exactly
        return float(np.round(t * fps) / fps)

    def obj(pair, enter, length):
        sz = SIZES[int(rng.integers(2))]
        radius = size / 3 * (rng.uniform(0.30, 0.36) if sz == "small" else rng.uniform(0.42, 0.48))
        a, b = _path(rng, size, radius)
        return SceneObject(pair[0], pair[1], sz, TEXTURES[int(rng.integers(len(TEXTURES)))],
                           snap(enter), snap(min(enter + length, duration)), a, b, float(radius))

    main_len = rng.uniform(3.0, 5.0)
    main_enter = rng.uniform(0.5, duration - main_len - 0.5)  # never the whole video: leaves empty time
    objects = [obj(main_pair, main_enter, main_len)]
    allowed = [p for p in (distractor_pairs or ALL_PAIRS) if p[0] != main_pair[0] and p[1] != main_pair[1]]
    for _ in range(int(rng.integers(3))):
        if not allowed:
            break
        length = rng.uniform(1.5, 2.5)
        enter = rng.uniform(0.0, duration - length)
        pair = allowed[int(rng.integers(len(allowed)))]
        d = obj(pair, enter, length)
        if d.exit - d.enter >= objects[0].exit - objects[0].enter:  # keep the main object the longest
            continue
        objects.append(d)
    return Scene(seed, index, size, fps, duration, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], objects)


def render(scene: Scene):
    """Yield (time, (S, S, 3) uint8 frame) for every frame of the scene: objects drawn in list
    order over a fixed background (each object keeps one texture pattern and tone)."""
    rng = np.random.default_rng([scene.seed, 104729, scene.index])
    s = scene.size
    bg = _background(rng, s, scene.background)
    looks = []
    for o in scene.objects:
        rgb = np.asarray(COLORS[o.color], np.float32) + rng.normal(0, 8, 3)
        looks.append((rgb, _texture(rng, s, o.texture)))
    for i in range(int(round(scene.duration * scene.fps))):
        t = i / scene.fps
        img = bg.copy()
        for o, (rgb, tex) in zip(scene.objects, looks):
            if not o.visible(t):
                continue
            x, y = o.centre(t)
            m = shape_mask(o.shape, s, y, x, o.radius)
            img[m] = rgb
            img[tex & m] = rgb * 0.6 if o.texture == "striped" else np.float32(245.0)
        yield t, np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_video(path: str, frames, fps: int, codec: str = "libx264") -> int:
    """Encode an iterable of (S, S, 3) uint8 frames as an MP4 with PyAV; -> frames written."""
    import av

    n = 0
    with av.open(path, mode="w") as container:
        stream = None
        for f in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = f.shape[:2]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":  # near-lossless: the colours are what the tests measure
                    stream.options = {"crf": "12"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return n


def write_scene(scene: Scene, directory: str, name: str | None = None) -> str:
    """Write `<directory>/<name>.mp4` and its ground truth `<name>.json`; -> the MP4's path."""
    os.makedirs(directory, exist_ok=True)
    name = name or f"scene_{scene.seed}_{scene.index:04d}"
    path = os.path.join(directory, name + ".mp4")
    write_video(path, (f for _, f in render(scene)), scene.fps)
    with open(os.path.join(directory, name + ".json"), "w") as fh:
        json.dump(scene.ground_truth(), fh, indent=1)
    return path


def galleries(seed: int, num_galleries: int, per_gallery: int = 20, **kw) -> list[list[Scene]]:
    """Retrieval galleries: in each, `per_gallery` scenes with distinct main pairs, and
    distractors only from the pairs no scene of that gallery has as its main object, so a query
    for a main object has exactly one right video."""
    if not 1 <= per_gallery < len(ALL_PAIRS):
        raise ValueError(f"per_gallery must be in 1..{len(ALL_PAIRS) - 1}")
    out = []
    for g in range(num_galleries):
        rng = np.random.default_rng([seed, 31337, g])
        order = rng.permutation(len(ALL_PAIRS))
        mains = [ALL_PAIRS[i] for i in order[:per_gallery]]
        rest = [ALL_PAIRS[i] for i in order[per_gallery:]]
        out.append([make_scene(seed, g * per_gallery + j, main_pair=p, distractor_pairs=rest, **kw)
                    for j, p in enumerate(mains)])
    return out
