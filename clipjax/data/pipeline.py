"""Training input: per-process local batches assembled into global arrays on the mesh.

Examples are addressed by a global index, so the iterator position (examples consumed) is
all a checkpoint needs to resume on exactly the examples an uninterrupted run would see,
whatever the number of processes.
"""

from __future__ import annotations

import collections
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import sharding as shd
from clipjax.data import augment
from clipjax.data.catalog import dataset_from_config
from clipjax.data.collection import collection_from_config
from clipjax.errors import ConfigError
from clipjax.preprocess import CLIP_MEAN, CLIP_STD
from clipjax.tokenizer import make_text_tokenizer


def process_rows(sharding, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows this process's devices hold under `sharding`.

    Read from the sharding rather than assumed from the process index, so any device order
    in the mesh feeds each device the rows GSPMD expects."""
    idx = sharding.addressable_devices_indices_map((batch_size,))
    starts = [sl[0].indices(batch_size)[0] for sl in idx.values()]
    stops = [sl[0].indices(batch_size)[1] for sl in idx.values()]
    start, stop = min(starts), max(stops)
    covered = np.zeros(batch_size, bool)
    for a, b in zip(starts, stops):
        covered[a:b] = True
    if not covered[start:stop].all():
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows; "
                         "order the mesh devices by process")
    return start, stop


def indexed_stream(ds, seed: int, shuffle_buffer: int, position: int, batch_size: int, rows):
    """The global example stream (records repeated, shuffled with a fixed-seed buffer) as
    (global index i, record) pairs from `position` on, keeping only the rows [start, stop) of
    each global batch that this process feeds (filtered before any decoding)."""
    import tensorflow as tf

    start, stop = rows
    ds = ds.repeat()
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.skip(position).enumerate(start=position)
    if (start, stop) != (0, batch_size):
        ds = ds.filter(lambda i, ex: tf.logical_and(i % batch_size >= start, i % batch_size < stop))
    return ds


def batched(ds, local_batch: int):
    """Local batches, prefetched, in deterministic order."""
    import tensorflow as tf

    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    return ds.with_options(opts)


@functools.lru_cache(maxsize=None)
def normalize_on_device(sharding, mean=CLIP_MEAN, std=CLIP_STD):
    """jit: uint8 (B, H, W, 3) global batch -> float32 CLIP-normalised, same sharding. The
    pipeline ships uint8 (4x fewer bytes through host memory and host-to-device copies) and
    this elementwise step runs where the batch already lives."""
    m = np.asarray(mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(std, np.float32) * 255.0)
    return jax.jit(lambda x: (x.astype(jnp.float32) - m) * inv, out_shardings=sharding)


class DevicePrefetch:
    """Keeps `depth` global batches already placed on the devices, so the host-to-device copy
    of batch n+1 overlaps step n (flax's `prefetch_to_device`, for global jax arrays). `make`
    builds one placed batch; the count of batches handed out is what a checkpoint stores."""

    def __init__(self, make, depth: int = 2):
        self._make, self._depth, self._queue = make, max(int(depth), 0), collections.deque()

    def __call__(self):
        while len(self._queue) <= self._depth:
            self._queue.append(self._make())
        return self._queue.popleft()


def collection_crop(seed: int, image_size: int, scale):
    """The random resized crop of a collection's images, applied where they are read (see
    ImageTextCollection.as_tf_dataset), so the shuffle buffer holds image_size crops, not the
    decoded photos (20 photos of 1024 px filled 5 GB before; a small collection repeated into a
    10,000-example buffer, far more). Its randomness comes from (seed, example key, epoch)
    instead of the example's stream index: as random, and as exactly reproduced on resume,
    but not the draw the index-seeded crop of the TFDS path would make."""
    import tensorflow as tf

    def crop(image, key: str, epoch: int):
        index = zlib.crc32(key.encode("utf-8", "surrogateescape")) | (int(epoch) << 32)
        out = augment.train_crop_resize(tf.constant(image), augment.example_seed(seed, index, 0), image_size, scale)
        return out.numpy()

    return crop


class GlobalBatches:
    """The skeleton every training stream shares: a tf.data stream of this process's rows of
    each global batch (`indexed_stream` + `batched`), turned into tuples of global arrays on
    the mesh, and the position (examples handed out) a checkpoint stores to resume exactly.

    A subclass builds `self._it` (an iterator of local tf batches) with `self.local_stream`
    and says how one local batch becomes numpy arrays (`_local`), one per sharding."""

    def __init__(self, batch_size: int, position: int, shardings):
        self.batch_size, self.position, self.shardings = int(batch_size), int(position), list(shardings)
        if self.position % self.batch_size:
            raise ConfigError(f"this run stopped after {self.position} examples, which batch_size {self.batch_size} "
                              "does not divide: resume with a batch size that divides it (e.g. the one it was "
                              "trained with)")
        self.rows = process_rows(self.shardings[0], self.batch_size)

    def local_stream(self, ds, data_config, prepare, example_bytes: int = 0):
        """`prepare(i, record)` mapped over this process's rows of the global stream of `ds`
        (config.data.seed / shuffle_buffer), batched to its share of each global batch. With
        `example_bytes` (decoded records of a known size) the shuffle buffer also stays within
        config.data.shuffle_buffer_bytes (default 1 GiB)."""
        import tensorflow as tf

        buffer = int(data_config.get("shuffle_buffer", 10_000) or 0)
        if example_bytes:
            budget = int(data_config.get("shuffle_buffer_bytes", 2**30) or 2**30)
            buffer = min(buffer, max(1, budget // int(example_bytes)))
        ds = indexed_stream(ds, int(data_config.get("seed", 0)), buffer, self.position, self.batch_size, self.rows)
        return batched(ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True),
                       self.rows[1] - self.rows[0])

    def global_arrays(self, local) -> tuple:
        return tuple(jax.make_array_from_process_local_data(sh, x, (self.batch_size,) + x.shape[1:])
                     for sh, x in zip(self.shardings, local))

    def counts(self) -> dict | None:
        """Decode counters of a collection source, else None."""
        return None

    def close(self) -> None:
        """Stop the input pipeline: drop the tf.data iterator (cancelling its prefetch and any
        generator it is running), so the process can exit."""
        self._it = None
        import gc

        gc.collect()

    def __iter__(self):
        return self

    def _local(self, batch) -> list:
        raise NotImplementedError

    def __next__(self):
        batch = self.global_arrays(self._local(next(self._it)))
        self.position += self.batch_size
        return batch


TFDATA_NAMES = ("clipjax_shapes", "clipjax_fashion_mnist", "collection", "shards")
_CAPTION_KEYS = ("captions", "caption", "text", "title")


class TFDataTrainData(GlobalBatches):
    """Global batches from a tf.data stream: a TFDS dataset under `config.data.data_dir`
    (clipjax_shapes, clipjax_fashion_mnist, or any prepared TFDS name) or a user collection
    (`config.data.name="collection"`, `config.data.source`: index files or tar shards).

    Determinism: the global example stream is fixed by the data and `config.data.seed` (records
    in stored order, repeated, shuffled with a fixed-seed buffer of `config.data.shuffle_buffer`),
    and example i of that stream (i = examples consumed before it) is global batch row
    i % batch_size. Each process keeps only the rows its devices hold (filtered on the raw,
    undecoded records, so it decodes and augments only its own rows), so the stream is the
    same for any number of processes. Augmentation and caption choice use stateless randomness
    from (seed, i). Resuming at `position` skips the first `position` records of the stream
    (before decoding), so it yields exactly the batches an uninterrupted run would.

    Cost note: every process reads (not decodes) every record; for a collection the reader
    decodes in Python, so every process decodes every example there.
    """

    def __init__(self, data_config, batch_size: int, cfg, mesh, rules, position: int = 0):
        super().__init__(batch_size, position, [shd.batch_sharding(mesh, 4, rules), shd.batch_sharding(mesh, 2, rules)])
        if process_rows(self.shardings[1], self.batch_size) != self.rows:
            raise ValueError("image and text batches are sharded differently")
        d = data_config
        # CLIP BPE for causal towers, WordPiece (config.data.tokenizer) for BERT towers
        self._tokenize = make_text_tokenizer(cfg.text, d.get("tokenizer", None))
        self.collection = None
        self.seed = int(d.get("seed", 0))
        self.image_size = cfg.vision.image_size
        self.scale = tuple(d.get("crop_scale", None) or (0.9, 1.0))
        self._it = iter(self._build(d))
        self._normalize = normalize_on_device(self.shardings[0])
        self._next_placed = DevicePrefetch(self._place, int(d.get("device_prefetch", 2)))

    # ------------------------------------------------------------------ source
    def _source(self, d):
        """(tf.data.Dataset of dicts with undecoded/encoded image, image key, caption key,
        whether the image is already decoded)."""
        import tensorflow_datasets as tfds

        name = d.name
        if name == "collection":
            self.collection = collection_from_config(d)
            crop = collection_crop(self.seed, self.image_size, self.scale)
            return self.collection.as_tf_dataset(crop), "image", "caption", True
        builder = dataset_from_config(d)
        features = builder.info.features
        image_key = d.get("image_key", None) or "image"
        caption_key = d.get("caption_key", None) or next((k for k in _CAPTION_KEYS if k in features), None)
        if image_key not in features or caption_key is None or caption_key not in features:
            raise ValueError(f"{name}: need an image feature and a caption feature; has {sorted(features)} "
                             "(set config.data.image_key / config.data.caption_key)")
        decoders = tfds.decode.PartialDecoding(
            {image_key: True, caption_key: True}, decoders={image_key: tfds.decode.SkipDecoding()})
        ds = builder.as_dataset(split=d.get("split", None) or "train", shuffle_files=False, decoders=decoders)
        return ds, image_key, caption_key, False

    def _build(self, d):
        import tensorflow as tf

        ds, image_key, caption_key, decoded = self._source(d)
        seed, size, scale = self.seed, self.image_size, self.scale

        def prepare(i, ex):
            image = ex[image_key]
            if not decoded:  # a collection's images arrive cropped (collection_crop)
                image = tf.io.decode_image(image, channels=3, expand_animations=False)
                image = augment.train_crop_resize(image, augment.example_seed(seed, i, 0), size, scale=scale)
            cap = ex[caption_key]
            if cap.shape.rank == 1:  # several captions: one at random, per example
                n = tf.shape(cap)[0]
                j = tf.random.stateless_uniform([], augment.example_seed(seed, i, 1), 0, n, dtype=tf.int32)
                cap = cap[j]
            return image, cap

        # a collection's records are decoded image_size crops: bound the buffer by bytes
        return self.local_stream(ds, d, prepare, size * size * 3 if decoded else 0)

    # ------------------------------------------------------------------ iteration
    def counts(self) -> dict | None:
        """A collection's decode counters (converted / skipped examples so far), else None."""
        return self.collection.counts.as_dict() if self.collection is not None else None

    def close(self) -> None:
        self._next_placed = None
        super().close()

    def _place(self):
        """The next global batch on the mesh: uint8 images normalised there, token ids."""
        images, caps = next(self._it)
        caps = [c.decode("utf-8") for c in caps.numpy()]
        local_imgs = images.numpy()  # uint8
        pixels, ids = self.global_arrays([local_imgs, self._tokenize(caps)])
        return self._normalize(pixels), ids

    def __next__(self):
        batch = self._next_placed()
        self.position += self.batch_size  # batches handed out, not the ones prefetched
        return batch


def make_train_data(config, cfg, mesh, rules, position: int = 0):
    """The training stream named by config.data.name: clipjax_shapes (default, built on first
    use), clipjax_fashion_mnist, collection, or any prepared TFDS dataset ("shards", webdataset
    tar shards streamed per process, is clipjax.data.shard_pipeline's)."""
    if not config.data.get("name"):
        raise ValueError(f"config.data.name is empty; use one of {', '.join(TFDATA_NAMES)} or a TFDS name")
    return TFDataTrainData(config.data, config.batch_size, cfg, mesh, rules, position)
