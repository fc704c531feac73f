"""Any TFDS segmentation dataset as CLIPSeg referring data (config.data.segmentation).

clipjax_shapes carries per-object masks with referring phrases; most TFDS segmentation
datasets carry one mask image per example instead, in one of two forms, which this adapter
turns into (image, prompt, mask) triples with the same augmentation as the built-in data:

  mode "foreground"  the mask marks one object whose class is the example's label
                     (oxford_iiit_pet: segmentation_mask 1 = pet, 2 = background, 3 = border;
                     label = breed). mask = pixels whose value is in `foreground`; prompt =
                     `template` with the label's class name (or the text of `phrase_key`).
  mode "classes"     every pixel holds a class index (scene_parse150's annotation, cityscapes'
                     segmentation_label, ...): one present class at random, mask = its pixels,
                     prompt = `template` with its name; values in `ignore` are never targets.

Negatives (probability config.data.negative_prob): the prompt of a class absent from the image,
with an empty mask. Class names come from `class_names` (a list, or a file with one per line)
or from the ClassLabel feature `label_key`. Images may be any size: training crops a random
square (side `crop_scale` of the short side) keeping the target inside; evaluation takes the
centre square (what clipjax.load's preprocessing keeps) of image and mask alike.

config.data.segmentation = dict(mask_key="segmentation_mask", mode="foreground", foreground=[1],
    label_key="label", phrase_key="", class_names=None, ignore=[0, 255], template="a photo of a {}.")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from clipjax.data.augment import example_seed, to_rgb
from clipjax.data.object_crops import crop_keeping, visual_prompt

MODES = ("foreground", "classes")


@dataclasses.dataclass(frozen=True)
class SegmentationAdapter:
    mask_key: str = "segmentation_mask"
    mode: str = "foreground"
    foreground: tuple = (1,)
    label_key: str = "label"
    phrase_key: str = ""
    class_names: Optional[tuple] = None
    ignore: tuple = (0, 255)
    template: str = "a photo of a {}."

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"segmentation.mode must be one of {MODES}, got {self.mode!r}")
        if "{}" not in self.template:
            raise ValueError(f"segmentation.template needs a {{}} for the class name, got {self.template!r}")

    @classmethod
    def from_config(cls, d) -> "SegmentationAdapter":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown config.data.segmentation fields {sorted(set(d) - known)}; known: {sorted(known)}")
        names = d.get("class_names")
        if isinstance(names, str):
            with open(os.path.expanduser(names), encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        for k in ("foreground", "ignore"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**{**d, "class_names": tuple(names) if names else None})

    def names(self, features) -> list[str]:
        """The class names prompts are made of."""
        if self.class_names:
            return list(self.class_names)
        feat = features[self.label_key] if self.label_key in features else None
        if feat is None or not hasattr(feat, "names"):
            raise ValueError(f"segmentation: give class_names, or label_key naming a ClassLabel feature "
                             f"(features: {sorted(features)})")
        return [n.replace("_", " ") for n in feat.names]

    def check(self, features) -> None:
        if self.mask_key not in features:
            raise ValueError(f"segmentation.mask_key {self.mask_key!r} is not a feature (features: {sorted(features)})")
        if self.mode == "foreground" and not self.phrase_key and self.label_key not in features:
            raise ValueError(f"segmentation.label_key {self.label_key!r} is not a feature; set phrase_key or label_key")

    # ------------------------------------------------------------------ training (tf)
    def example(self, ex, index, seed: int, image_size: int, names, negative_prob: float, visual_prob: float,
                crop_scale=(0.75, 1.0)):
        """tf: one example -> (image 0-255 float (S,S,3), prompt, mask (S,S), visual prompt
        0-255 float (S,S,3), alpha), as clipjax.data.segmentation.segmentation_example."""
        import tensorflow as tf

        image = to_rgb(ex["image"])
        raw = tf.cast(ex[self.mask_key], tf.int32)
        raw = raw[..., 0] if raw.shape.rank == 3 else raw
        n = len(names)
        names_t = tf.constant(list(names))
        if self.mode == "foreground":
            mask = tf.cast(tf.reduce_any(raw[..., None] == tf.constant(list(self.foreground), tf.int32), -1),
                           tf.float32)
            cls = tf.cast(ex[self.label_key], tf.int32) if self.label_key in ex else tf.constant(-1)
            absent = ~tf.one_hot(cls, n, on_value=True, off_value=False, dtype=tf.bool)
        else:
            ids = tf.range(n, dtype=tf.int32)
            usable = ~tf.reduce_any(ids[:, None] == tf.constant(list(self.ignore) or [-1], tf.int32)[None], axis=1)
            in_image = tf.reduce_any(raw[..., None] == ids, axis=[0, 1])
            # one present, usable class at random (uniform over them)
            u = tf.random.stateless_uniform([n], example_seed(seed, index, 16))
            cls = tf.argmax(tf.where(in_image & usable, u, -1.0), output_type=tf.int32)
            mask = tf.cast(tf.equal(raw, cls), tf.float32)
            absent = usable & ~in_image
        text = ex[self.phrase_key] if self.phrase_key else tf.strings.regex_replace(
            self.template, r"\{\}", tf.gather(names_t, tf.maximum(cls, 0)))
        # negatives: the prompt of a class absent from the image (uniform over them; none: positive)
        negative = tf.random.stateless_uniform([], example_seed(seed, index, 11)) < negative_prob
        negative &= tf.reduce_any(absent)
        u = tf.random.stateless_uniform([n], example_seed(seed, index, 12))
        other = tf.argmax(tf.where(absent, u, -1.0), output_type=tf.int32)
        prompt = tf.where(negative, tf.strings.regex_replace(self.template, r"\{\}", tf.gather(names_t, other)), text)
        vp = visual_prompt(image, mask, image_size)
        img, target = crop_keeping(image, mask, example_seed(seed, index, 13), image_size, crop_scale)
        target = tf.where(negative, tf.zeros_like(target), target)
        use_visual = tf.random.stateless_uniform([], example_seed(seed, index, 14)) < visual_prob
        alpha = tf.where(use_visual & ~negative, tf.random.stateless_uniform([], example_seed(seed, index, 15)), 1.0)
        return img, prompt, target, vp, alpha

    # ------------------------------------------------------------------ evaluation (numpy)
    def eval_examples(self, builder, split: str, examples: int) -> dict:
        """Every target of the first `examples` images (foreground: the labelled object;
        classes: each present class not ignored), centre-cropped square: the dict
        clipjax.data.segmentation.eval_examples returns ("classes" = class index)."""
        import tensorflow_datasets as tfds

        features = builder.info.features
        self.check(features)
        names = self.names(features)
        images, phrases, masks, classes, owner = [], [], [], [], []
        ds = builder.as_dataset(split=split, shuffle_files=False)
        for i, ex in enumerate(tfds.as_numpy(ds.take(examples))):
            img, raw = _centre_square(_rgb(ex["image"])), _centre_square(np.asarray(ex[self.mask_key]))
            raw = raw[..., 0] if raw.ndim == 3 else raw
            if self.mode == "foreground":
                label = int(ex[self.label_key]) if self.label_key in ex else -1
                text = (ex[self.phrase_key].decode("utf-8") if self.phrase_key
                        else self.template.format(names[label]))
                targets = [(label, text, np.isin(raw, self.foreground))]
            else:
                targets = [(int(c), self.template.format(names[int(c)]), raw == c) for c in np.unique(raw)
                           if int(c) not in self.ignore and 0 <= int(c) < len(names)]
            for c, text, m in targets:
                images.append(img)
                phrases.append(text)
                masks.append(m.astype(np.uint8))
                classes.append(c)
                owner.append(i)
        if not images:
            raise ValueError(f"split {split!r} has no targets to segment")
        return {"images": np.stack(images), "phrases": phrases, "masks": np.stack(masks),
                "classes": np.asarray(classes), "image_index": np.asarray(owner)}


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _centre_square(a: np.ndarray) -> np.ndarray:
    """The centre square of an (H, W, ...) array, with clipjax.preprocess's floor offsets."""
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return a[top:top + s, left:left + s]


def adapter_from_config(data_config) -> Optional[SegmentationAdapter]:
    """config.data.segmentation (a dict, or its JSON as given on the command line) -> adapter."""
    d = data_config.get("segmentation", None)
    if isinstance(d, str):
        import json

        d = json.loads(d) if d.strip() else None
    return SegmentationAdapter.from_config(d) if d else None
