"""Referring-segmentation data for CLIPSeg from clipjax_shapes (or any TFDS dataset with the
same `objects` {mask, phrase} layout; other TFDS segmentation datasets through
clipjax.data.segmentation_adapter): one (image, prompt, mask) triple per example.

Training stream (tf.data, the same global-index / per-process-rows / exact-resume scheme as
clipjax/data/pipeline.py):
  - one object of the image at random, its referring phrase and mask;
  - with probability `negative_prob` a negative prompt instead: a phrase of an object that is
    not in the image (size, colour, shape, position differ from every object), empty mask;
  - a random square crop (side `crop_scale` of the image) placed to keep the target's
    bounding box inside when it fits, resized to the model size (mask: bilinear, then > 0.5);
  - a visual prompt for the object as the CLIPSeg paper's best variant: the object's
    bounding-box crop with the background darkened to 10% and blurred; text and visual
    conditioning are mixed per example with weight alpha: alpha = 1 (text only) with
    probability 1 - `visual_prob`, else alpha ~ U(0, 1). Deviation from the paper: the
    support image is the query image itself (the paper samples another image of the class).

Evaluation examples: every object of the first `examples` images of a split, with its phrase,
mask and class (colour + shape), as numpy.
"""

from __future__ import annotations

import numpy as np

from clipjax import sharding as shd
from clipjax.data.augment import example_seed, normalize
from clipjax.data.catalog import dataset_from_config
from clipjax.data.object_crops import crop_keeping, visual_prompt
from clipjax.data.pipeline import GlobalBatches
from clipjax.data.segmentation_adapter import adapter_from_config
from clipjax.data.shapes_dataset import COLOR_NAMES, POSITION_PHRASES, POSITIONS, SHAPES, SIZES


def _phrase_table():
    import tensorflow as tf

    return (tf.constant(list(SIZES)), tf.constant(list(COLOR_NAMES)), tf.constant(list(SHAPES)),
            tf.constant([POSITION_PHRASES[p] for p in POSITIONS]))


def negative_phrase(objects, seed):
    """A referring phrase matching no object of the image (tf)."""
    import tensorflow as tf

    sizes, colors, shapes, positions = _phrase_table()
    present = tf.stack([objects["size"], objects["color"], objects["shape"], objects["position"]], axis=1)
    dims = tf.constant([len(SIZES), len(COLOR_NAMES), len(SHAPES), len(POSITIONS)], tf.int64)
    # 8 candidates; keep the first absent one (all 8 present has probability ~0)
    cand = tf.random.stateless_uniform([8, 4], seed, 0, 1 << 30, dtype=tf.int64) % dims
    match = tf.reduce_any(tf.reduce_all(cand[:, None, :] == tf.cast(present, tf.int64)[None], axis=-1), axis=1)
    k = tf.argmin(tf.cast(match, tf.int32))
    c = cand[k]
    return tf.strings.join(["the", tf.gather(sizes, c[0]), tf.gather(colors, c[1]), tf.gather(shapes, c[2]),
                            tf.gather(positions, c[3])], separator=" ")


def segmentation_example(ex, index, seed: int, image_size: int, negative_prob: float, visual_prob: float,
                         crop_scale=(0.75, 1.0)):
    """tf: one training example -> (image 0-255 float (S,S,3), phrase, mask (S,S), visual
    prompt 0-255 float (S,S,3), alpha)."""
    import tensorflow as tf


    objs = ex["objects"]
    n = tf.shape(objs["phrase"])[0]
    j = tf.random.stateless_uniform([], example_seed(seed, index, 10), 0, n, dtype=tf.int32)
    mask = tf.cast(objs["mask"][j][:, :, 0], tf.float32)
    negative = tf.random.stateless_uniform([], example_seed(seed, index, 11)) < negative_prob
    phrase = tf.cond(negative, lambda: negative_phrase(objs, example_seed(seed, index, 12)), lambda: objs["phrase"][j])
    vp = visual_prompt(ex["image"], mask, image_size)  # of a present object even for negatives ...
    img, target = crop_keeping(ex["image"], mask, example_seed(seed, index, 13), image_size, crop_scale)
    target = tf.where(negative, tf.zeros_like(target), target)
    use_visual = tf.random.stateless_uniform([], example_seed(seed, index, 14)) < visual_prob
    alpha = tf.where(use_visual & ~negative,  # ... but negatives are text-only (alpha = 1)
                     tf.random.stateless_uniform([], example_seed(seed, index, 15)), 1.0)
    return img, phrase, target, vp, alpha


def eval_examples(builder, split: str, examples: int, adapter=None):
    """Every object of the first `examples` images: dict of numpy arrays images (N,S,S,3) uint8,
    phrases (N,), masks (N,S,S) uint8, classes (N,) ("colour shape" index), image_index (N,).
    With a SegmentationAdapter, its targets of any TFDS segmentation dataset instead."""
    import tensorflow_datasets as tfds

    if adapter is not None:
        return adapter.eval_examples(builder, split, examples)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    images, phrases, masks, classes, owner = [], [], [], [], []
    for i, ex in enumerate(tfds.as_numpy(ds.take(examples))):
        o = ex["objects"]
        for k in range(len(o["phrase"])):
            images.append(ex["image"])
            phrases.append(o["phrase"][k].decode("utf-8"))
            masks.append(o["mask"][k][:, :, 0])
            classes.append(int(o["color"][k]) * len(SHAPES) + int(o["shape"][k]))
            owner.append(i)
    if not images:
        raise ValueError(f"split {split!r} has no objects to segment")
    return {"images": np.stack(images), "phrases": phrases, "masks": np.stack(masks),
            "classes": np.asarray(classes), "image_index": np.asarray(owner)}


class SegmentationTrainData(GlobalBatches):
    """Global CLIPSeg training batches: (images (B,S,S,3) CLIP-normalised, prompt ids (B,L),
    masks (B,S,S) 0/1 float, visual prompts (B,S,S,3) CLIP-normalised, alpha (B,)).

    config.data: name (a TFDS dataset with image + objects {mask, phrase, size, color, shape,
    position}, default clipjax_shapes; or any TFDS segmentation dataset described by
    config.data.segmentation, see clipjax.data.segmentation_adapter), data_dir,
    shapes/builder_kwargs, seed, shuffle_buffer, negative_prob (0.2), visual_prob (0.5),
    crop_scale ((0.75, 1.0)). Same determinism and exact-resume scheme as
    clipjax.data.pipeline.TFDataTrainData."""

    def __init__(self, data_config, batch_size: int, image_size: int, tokenize, mesh, rules, position: int = 0):
        super().__init__(batch_size, position, [shd.batch_sharding(mesh, n, rules) for n in (4, 2, 3, 4, 1)])
        d = data_config
        self.tokenize = tokenize
        name = d.get("name") or "clipjax_shapes"
        builder = dataset_from_config(d)
        features = builder.info.features
        self.adapter = adapter_from_config(d)
        if self.adapter is not None:
            self.adapter.check(features)
        elif "objects" not in features or "mask" not in features["objects"].feature:
            raise ValueError(f"{name} has no objects/mask feature: CLIPSeg training needs per-object masks and "
                             "phrases, or config.data.segmentation describing its mask (see "
                             "clipjax.data.segmentation_adapter)")
        self._it = iter(self._build(builder, d, image_size))

    def _build(self, builder, d, image_size):
        seed = int(d.get("seed", 0))
        neg, vis = float(d.get("negative_prob", 0.2)), float(d.get("visual_prob", 0.5))
        scale = tuple(d.get("crop_scale", None) or (0.75, 1.0))
        ds = builder.as_dataset(split=d.get("split", None) or "train", shuffle_files=False)
        adapter = self.adapter
        names = adapter.names(builder.info.features) if adapter is not None else None

        def prepare(i, ex):
            if adapter is not None:
                img, phrase, mask, vp, alpha = adapter.example(ex, i, seed, image_size, names, neg, vis, scale)
            else:
                img, phrase, mask, vp, alpha = segmentation_example(ex, i, seed, image_size, neg, vis, scale)
            return normalize(img / 255.0), phrase, mask, normalize(vp / 255.0), alpha

        return self.local_stream(ds, d, prepare)

    def _local(self, batch) -> list:
        img, phrase, mask, vp, alpha = batch
        ids = self.tokenize([p.decode("utf-8") for p in phrase.numpy()])
        return [np.asarray(img.numpy(), np.float32), ids, np.asarray(mask.numpy(), np.float32),
                np.asarray(vp.numpy(), np.float32), np.asarray(alpha.numpy(), np.float32)]
