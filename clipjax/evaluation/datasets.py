"""Evaluation data as streams of uint8 images (any size) with labels or captions, the objects
of a segmentation split, and what a dataset says it held out of training.

Sources: clipjax_shapes / fashion_mnist (clipjax's builders, generated locally), any prepared
TFDS dataset (cifar10, cifar100, imagenet2012, coco_captions, ...; never downloaded), or a user
collection (CSV/TSV/JSONL or tar shards). Images are decoded here and preprocessed by the
caller exactly as clipjax.load(...) does at inference.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import numpy as np

from clipjax.data.catalog import prepare_once
from clipjax.data.collection import ImageTextCollection
from clipjax.data.segmentation import eval_examples
from clipjax.data.segmentation_adapter import SegmentationAdapter

_CAPTION_KEYS = ("captions", "caption", "text", "title")


def tfds_builder(name: str, data_dir: Optional[str], builder_kwargs: dict):
    """The prepared builder of `name` (clipjax.data.catalog.prepare_once)."""
    return prepare_once(name, data_dir, builder_kwargs)


def _check_split(builder, split: str):
    base = split.split("[")[0]
    if base not in builder.info.splits:
        raise ValueError(f"{builder.info.name} has no split {split!r}; it has {sorted(builder.info.splits)}")


def dataset_metadata(builder) -> dict:
    """What a dataset publishes about itself beyond its features (builder.info.metadata:
    prompt_templates, held_out_classnames, held_out_pairs for clipjax_shapes), {} if nothing."""
    meta = getattr(getattr(builder, "info", None), "metadata", None)
    return dict(meta) if meta else {}


def classification_info(builder, label_key: str = "label"):
    import tensorflow_datasets as tfds

    feat = builder.info.features
    if label_key not in feat or not isinstance(feat[label_key], tfds.features.ClassLabel):
        raise ValueError(f"{builder.info.name} has no ClassLabel feature {label_key!r} to classify")
    return list(feat[label_key].names)


def held_out_labels(builder, label_key: str = "label") -> list[int]:
    """The labels of the classes a dataset held out of training (its `held_out_classnames`
    metadata, as clipjax_shapes publishes them), [] if none."""
    names = classification_info(builder, label_key)
    return [names.index(c) for c in dataset_metadata(builder).get("held_out_classnames") or ()]


def held_out_pair_classes(builder) -> list[int]:
    """clipjax_shapes' held-out colour-shape pairs (`held_out_pairs` metadata) as the object
    classes clipjax.data.segmentation.eval_examples gives (colour * num_shapes + shape), [] if
    the dataset holds none out or has no such objects."""
    features = builder.info.features
    objects = features["objects"] if "objects" in features else {}
    pairs = dataset_metadata(builder).get("held_out_pairs") or ()
    if not pairs or "color" not in objects or "shape" not in objects:
        return []
    return [objects["color"].str2int(c) * objects["shape"].num_classes + objects["shape"].str2int(s)
            for c, s in pairs]


def segmentation_examples(builder, split: str, examples: int, adapter_spec: str = ""):
    """(every object of the first `examples` images (0: all) of `split`, as
    clipjax.data.segmentation.eval_examples gives them; held_out_pair_classes). `adapter_spec`:
    a SegmentationAdapter as JSON or a JSON file, for datasets without clipjax_shapes' objects."""
    if adapter_spec and os.path.exists(adapter_spec):
        with open(adapter_spec) as f:
            adapter_spec = f.read()
    adapter = SegmentationAdapter.from_config(json.loads(adapter_spec)) if adapter_spec else None
    return eval_examples(builder, split, examples or 10 ** 9, adapter), held_out_pair_classes(builder)


def nonempty(batches, message: str):
    """`batches` passed through; ValueError(message) at their end when there were none (a
    split or collection with nothing usable says so instead of failing later)."""
    empty = True
    for b in batches:
        empty = False
        yield b
    if empty:
        raise ValueError(message)


def iterate_labelled(builder, split: str, batch: int, examples: Optional[int] = None,
                     image_key: str = "image", label_key: str = "label") -> Iterator[tuple[list, np.ndarray]]:
    """(list of uint8 HWC images, int labels) batches of the first `examples` records."""
    import tensorflow_datasets as tfds

    _check_split(builder, split)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({image_key: True, label_key: True}))
    if examples:
        ds = ds.take(examples)
    imgs, labels = [], []
    for ex in tfds.as_numpy(ds):
        imgs.append(ex[image_key])
        labels.append(int(ex[label_key]))
        if len(imgs) == batch:
            yield imgs, np.asarray(labels)
            imgs, labels = [], []
    if imgs:
        yield imgs, np.asarray(labels)


def labelled_batches(builder, split: str, batch: int, examples: Optional[int] = None):
    """iterate_labelled, with a clear error when the split has no examples."""
    return nonempty(iterate_labelled(builder, split, batch, examples),
                    f"split {split!r} of {builder.info.name} has no examples")


def split_size(builder, split: str, examples: Optional[int]) -> int:
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        n = 0
    return min(n, examples) if examples else n


def iterate_captioned(source, split: str, batch: int, examples: Optional[int] = None,
                      image_key: str = "image", caption_key: Optional[str] = None):
    """(list of uint8 images, list of caption lists) batches. `source`: a TFDS builder or an
    ImageTextCollection."""
    if isinstance(source, ImageTextCollection):
        it = ((ex["image"], [ex["caption"]]) for ex in source)
    else:
        import tensorflow_datasets as tfds

        feat = source.info.features
        key = caption_key or next((k for k in _CAPTION_KEYS if k in feat), None)
        if key is None:
            raise ValueError(f"{source.info.name} has no caption feature ({', '.join(_CAPTION_KEYS)})")
        _check_split(source, split)
        ds = source.as_dataset(split=split, shuffle_files=False,
                               decoders=tfds.decode.PartialDecoding({image_key: True, key: True}))

        def caps(v):
            if isinstance(v, dict):  # coco_captions: {"text": [...], "id": [...]}
                v = v.get("text")
            return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.atleast_1d(v)]

        it = ((ex[image_key], caps(ex[key])) for ex in tfds.as_numpy(ds))
    imgs, caps_ = [], []
    for n, (img, c) in enumerate(it):
        if examples and n >= examples:
            break
        imgs.append(img)
        caps_.append(c)
        if len(imgs) == batch:
            yield imgs, caps_
            imgs, caps_ = [], []
    if imgs:
        yield imgs, caps_
