"""Tag2Text / RAM inputs: images with a multi-hot tag vector and captions, and the BERT-side
text framing the release uses.

Text framing (recognize-anything tag2text.py / ram.py):
  tags     "circle | red | small" tokenised to `tag_max_length`, [ENC] in place of [CLS]
  caption  prompt + caption ("a picture of a small red circle") tokenised to
           `caption_max_length`, [DEC] in place of [CLS]; targets ignore the padding and
           the [DEC] + prompt positions (`prompt_length` = tokens of the prompt incl. [DEC]).

The tokenizer is WordPiece (transformers' BertTokenizer) from a vocab.txt: bert-base-uncased's
plus [DEC] and [ENC] for released models; for clipjax_shapes, `shapes_vocabulary()` writes a
small vocabulary covering every word the builder's captions and tags use.

Sources: a TFDS dataset with `image`, `captions` and a multi-hot `tags` (clipjax_shapes), or a
user's collection (clipjax.data.collection: CSV / TSV / JSONL or tar shards with a tags column
/ field) read against the run's tag list: tags are matched case-insensitively, and names not
in the list are dropped and counted (`unknown_tags`), never silently mis-assigned.
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np

from clipjax import sharding as shd
from clipjax.data import shapes_dataset as sd
from clipjax.data.augment import example_seed, normalize
from clipjax.data.catalog import dataset_from_config
from clipjax.data.collection import ImageTextCollection, collection_from_config
from clipjax.data.pipeline import GlobalBatches, collection_crop
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import DEC, ENC, TagTextTokenizer, tag_strings  # noqa: F401  (re-exported)

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def shapes_vocabulary(path: str) -> str:
    """Write (once) a WordPiece vocab.txt for clipjax_shapes' captions and tags; returns path."""
    words = set(sd.SHAPES + sd.COLOR_NAMES + sd.SIZES + sd.TEXTURES + sd.BACKGROUNDS + sd.POSITIONS)
    words |= {"a", "an", "the", "photo", "picture", "of", "one", "two", "three", "shape", "shapes", "on", "at",
              "in", "and", "background", "with", ":", ",", "|", ".", "-"}
    for phrase in sd.POSITION_PHRASES.values():
        words |= set(phrase.split())
    vocab = list(SPECIAL) + sorted(words) + [DEC, ENC]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(tmp, path)
    return path


def shapes_tag_names() -> tuple[str, ...]:
    return tuple(sd.TAGS)


class TagMatcher:
    """Tag names -> multi-hot rows over a tag list (case- and space-insensitive); counts the
    names that are not in the list."""

    def __init__(self, tag_names: Sequence[str]):
        self.index = {self.key(t): i for i, t in enumerate(tag_names)}
        self.size = len(tag_names)
        self.unknown: collections.Counter = collections.Counter()

    @staticmethod
    def key(name: str) -> str:
        return " ".join(str(name).lower().split())

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        row = np.zeros(self.size, np.float32)
        for n in names:
            i = self.index.get(self.key(n))
            if i is None:
                self.unknown[self.key(n)] += 1
            else:
                row[i] = 1.0
        return row


def collection_dataset(collection, matcher: TagMatcher, transform=None):
    """tf.data of {"image": uint8 (H, W, 3), "captions": (1,) string, "tags": (C,) float32}
    from an ImageTextCollection (decoded and cleaned by its robust reader); `transform(image,
    key, epoch)` as in ImageTextCollection.as_tf_dataset (training's crop, before any buffer)."""
    import tensorflow as tf

    passes = [0]

    def gen():
        epoch, passes[0] = passes[0], passes[0] + 1
        for ex in collection:
            image = ex["image"] if transform is None else transform(ex["image"], ex["key"], epoch)
            yield {"image": image, "captions": np.asarray([ex["caption"].encode("utf-8")], object),
                   "tags": matcher(ex["tags"])}

    return tf.data.Dataset.from_generator(gen, output_signature={
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "captions": tf.TensorSpec((1,), tf.string),
        "tags": tf.TensorSpec((matcher.size,), tf.float32)})


class TaggingTrainData(GlobalBatches):
    """Global Tag2Text / RAM batches: (images (B,S,S,3) CLIP-normalised, tags (B,C) float 0/1,
    tag ids (B,Lt), caption ids (B,Lc)). The tag encoder reads the ground-truth tags (the
    release's `parse_tag`); one of the example's captions is drawn per visit from (seed, index).

    config.data: name (a TFDS dataset with image, captions and a multi-hot `tags`; default
    clipjax_shapes; or "collection" with `source` + optional `collection_kwargs`, whose images
    get the random resized crop of `crop_scale`), data_dir, shapes / builder_kwargs, seed,
    shuffle_buffer, split. Same determinism and exact-resume scheme as
    clipjax.data.pipeline.TFDataTrainData."""

    def __init__(self, data_config, batch_size: int, image_size: int, tokenizer: TagTextTokenizer, tag_names, mesh,
                 rules, position=0, with_text: bool = False, teacher=None):
        super().__init__(batch_size, position,
                         [shd.batch_sharding(mesh, n, rules) for n in (4, 2, 2, 2, 2)[:5 if with_text else 4]])
        d = data_config
        self.tokenizer, self.tag_names = tokenizer, list(tag_names)
        self.with_text = with_text  # + [CLS] + caption ids (B, Lc) for ITC / ITM
        self.teacher = teacher  # + its embeddings of the images (B, D), computed on the mesh (RAM)
        name = d.get("name") or "clipjax_shapes"
        self.collection = self.matcher = None
        if name == "collection":
            self.collection = collection_from_config(d)
            self.matcher = TagMatcher(self.tag_names)
            crop = collection_crop(int(d.get("seed", 0)), image_size, tuple(d.get("crop_scale", None) or (0.9, 1.0)))
            self._it = iter(self._build(collection_dataset(self.collection, self.matcher, crop), d, image_size,
                                        cropped=True))
            return
        builder = dataset_from_config(d)
        features = builder.info.features
        for key in ("image", "captions", "tags"):
            if key not in features:
                raise ValueError(f"{name} has no {key!r} feature: Tag2Text / RAM training needs images, captions "
                                 "and multi-hot tags")
        if features["tags"].shape[-1] != len(self.tag_names):
            raise ValueError(f"{name} has {features['tags'].shape[-1]} tags, the tag list {len(self.tag_names)}")
        self._it = iter(self._build(builder.as_dataset(split=d.get("split", None) or "train", shuffle_files=False),
                                    d, image_size))

    def _build(self, ds, d, image_size, cropped: bool = False):
        import tensorflow as tf

        seed = int(d.get("seed", 0))
        def prepare(i, ex):
            if cropped:  # a collection's images: cropped where they were read (collection_crop)
                img = normalize(tf.cast(ex["image"], tf.float32) / 255.0)
            else:
                img = tf.image.resize(tf.cast(ex["image"], tf.float32), (image_size, image_size), method="bicubic",
                                      antialias=True)
                img = normalize(tf.clip_by_value(img, 0.0, 255.0) / 255.0)
            caps = ex["captions"]
            j = tf.random.stateless_uniform([], example_seed(seed, i, 20), 0, tf.shape(caps)[0], dtype=tf.int32)
            return img, tf.cast(ex["tags"], tf.float32), caps[j]

        return self.local_stream(ds, d, prepare, image_size * image_size * 3 if cropped else 0)

    def counts(self) -> dict | None:
        """A collection's decode counters plus the tag names not in the tag list, else None."""
        if self.collection is None:
            return None
        return {**self.collection.counts.as_dict(), "unknown_tags": sum(self.matcher.unknown.values())}

    def _local(self, batch) -> list:
        img, tags, caption = batch
        tags = np.asarray(tags.numpy(), np.float32)
        tag_ids = self.tokenizer.tags(tag_strings(tags > 0.5, self.tag_names))
        captions = [c.decode("utf-8") for c in caption.numpy()]
        local = [np.asarray(img.numpy(), np.float32), tags, tag_ids, self.tokenizer.captions(captions)]
        if self.with_text:
            local.append(self.tokenizer.texts(captions))
        return local

    def __next__(self):
        batch = super().__next__()
        return batch + ((self.teacher(batch[0]),) if self.teacher is not None else ())


def eval_set(source, split: str, examples: int, image_size: int, tag_names: Sequence[str] | None = None):
    """First `examples` images of `split` of a TFDS builder, or of an ImageTextCollection
    (then `tag_names` maps its tags; `split` is unused; images get clipjax.load's
    preprocessing): dict(images (N,S,S,3) float CLIP-normalised, tags (N,C) uint8, captions
    list of lists of str, unknown_tags)."""
    if isinstance(source, ImageTextCollection):
        return _collection_eval_set(source, examples, image_size, tag_names)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = source
    images, tags, caps = [], [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(examples)):
        img = tf.image.resize(tf.cast(ex["image"], tf.float32), (image_size, image_size), method="bicubic",
                              antialias=True)
        images.append(normalize(tf.clip_by_value(img, 0.0, 255.0) / 255.0).numpy())
        tags.append(ex["tags"])
        caps.append([c.decode("utf-8") for c in ex["captions"]])
    if not images:
        raise ValueError(f"split {split!r} is empty")
    return dict(images=np.stack(images).astype(np.float32), tags=np.stack(tags), captions=caps, unknown_tags=0)


def _collection_eval_set(collection, examples: int, image_size: int, tag_names):
    """Each usable row is one image, its caption the one reference."""
    if tag_names is None:
        raise ValueError("a collection's tags need the model's tag list (tag_names)")
    matcher = TagMatcher(tag_names)
    images, tags, caps = [], [], []
    for ex in collection:
        if len(images) >= examples:
            break
        images.append(preprocess_images([ex["image"]], image_size)[0])
        tags.append(matcher(ex["tags"]))
        caps.append([ex["caption"]])
    if not images:
        raise ValueError("the collection has no usable example")
    return dict(images=np.stack(images).astype(np.float32), tags=np.stack(tags).astype(np.uint8), captions=caps,
                unknown_tags=sum(matcher.unknown.values()))
