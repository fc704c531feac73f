"""clipjax_shapes as a localisation and question-answering benchmark: its examples with named
objects (colour, shape, referring phrase, mask), and questions whose answers the generator knows.

Questions per image (only those with one right answer):
  colour  "what colour is the {shape}?"          for each object whose shape is unique in the image
  shape   "what shape is the {colour} object?"   for each object whose colour is unique in the image
  exists  "is there a {colour} {shape}?"         one present object (yes) and one colour-shape pair
                                                  drawn from the 30 that the image lacks (no): balanced
  count   "how many objects are there?"          one, two or three
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from clipjax.apps.vqa import NUMBER_WORDS
from clipjax.data.shapes_dataset import build_shapes


def read_examples(split: str = "test", limit: int | None = None, data_dir=None, **builder_kwargs):
    """Yield dict(image=(S, S, 3) uint8, objects=[dict(color, shape, phrase, mask (S, S) bool)])
    from the prepared clipjax_shapes (prepared here first when missing: nothing is downloaded)."""
    import tensorflow_datasets as tfds

    builder = build_shapes(data_dir, **builder_kwargs)
    if split not in builder.info.splits:
        raise ValueError(f"clipjax_shapes has no split {split!r}; splits: {', '.join(builder.info.splits)}")
    feats = builder.info.features["objects"]
    colors, shapes = feats["color"].names, feats["shape"].names
    ds = builder.as_dataset(split=split if limit is None else f"{split}[:{int(limit)}]")
    for ex in tfds.as_numpy(ds):
        o = ex["objects"]
        yield dict(image=ex["image"], objects=[
            dict(color=colors[int(c)], shape=shapes[int(s)], phrase=p.decode(), mask=m[..., 0].astype(bool))
            for c, s, p, m in zip(o["color"], o["shape"], o["phrase"], o["mask"])])


def questions_for(objects: list[dict], rng: np.random.Generator, colors, shapes) -> list[tuple[str, str, str]]:
    """(type, question, answer) triples for one image's objects (see the module docstring)."""
    out = []
    shape_n = Counter(o["shape"] for o in objects)
    color_n = Counter(o["color"] for o in objects)
    for o in objects:
        if shape_n[o["shape"]] == 1:
            out.append(("colour", f"what colour is the {o['shape']}?", o["color"]))
    for o in objects:
        if color_n[o["color"]] == 1:
            out.append(("shape", f"what shape is the {o['color']} object?", o["shape"]))
    present = {(o["color"], o["shape"]) for o in objects}
    c, s = sorted(present)[int(rng.integers(len(present)))]
    out.append(("exists", f"is there a {c} {s}?", "yes"))
    absent = [(c, s) for c in colors for s in shapes if (c, s) not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    out.append(("exists", f"is there a {c} {s}?", "no"))
    out.append(("count", "how many objects are there?", NUMBER_WORDS[len(objects)]))
    return out
