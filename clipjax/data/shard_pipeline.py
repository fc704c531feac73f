"""Training batches from webdataset tar shards: `ShardTrainData`, each process reading its own
shards (`clipjax.data.shards.ShardStream`) and resuming exactly from a per-process state.

Unlike TFDataTrainData (one global example stream, every process reading every record and
keeping its rows), each process here reads a disjoint share of the shards and fills its own
rows of each global batch (GlobalBatches.rows) from them: the pod reads every byte once. The
price: the stream depends on the number of processes, and resuming needs each process's
stream state (`state()`), not only the position.

Per batch, one producer thread takes raw samples from the stream, decodes them in a small
thread pool (`decode_threads`, PIL through clipjax.data.images: robust to CMYK, 16-bit, alpha,
truncated and corrupt files; each skipped sample counted in `counts()`), crops them (the
training random resized crop of clipjax.data.augment, randomness from (seed, url:key, epoch),
as pipeline.collection_crop), pulls more samples for skipped ones, and queues the uint8 batch
with the stream state taken right after its last sample. `__next__` hands out global arrays
(tokenised captions, images normalised on the devices) kept `device_prefetch` deep, and
remembers the state attached to the batch handed out: `state()` is the position after the
last batch handed out, whatever has been read ahead.

config.data keys: source (the shard spec, "a/{000..099}.tar::b/{00..09}.tar"), source_weights
("1::2"), resampled, shuffle_buffer (raw samples, default 1000), seed, in_flight (shards open
at once, default 4), crop_scale, tokenizer (WordPiece for BERT towers), decode_threads
(default 4), host_prefetch (local batches decoded ahead, default 2), device_prefetch (2),
max_caption_chars.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import queue
import threading
import zlib

import jax
import numpy as np

from clipjax import sharding as shd
from clipjax.data import augment
from clipjax.data.collection import IMAGE_EXTS
from clipjax.data.images import DEFAULT_MAX_CAPTION_CHARS, Counts, clean_caption, decode_image
from clipjax.data.pipeline import DevicePrefetch, GlobalBatches, normalize_on_device, process_rows
from clipjax.data.shards import stream_from_config
from clipjax.errors import ConfigError
from clipjax.tokenizer import make_text_tokenizer

log = logging.getLogger(__name__)


def sample_caption(sample: dict, counts: Counts, max_chars: int = DEFAULT_MAX_CAPTION_CHARS):
    """The caption of a raw webdataset sample: .txt, else .caption, else .json's "caption"
    (as collection.py reads tar shards); None (counted) when there is none usable."""
    raw = sample.get("txt", sample.get("caption"))
    if raw is None and sample.get("json") is not None:
        try:
            meta = json.loads(sample["json"].decode("utf-8", "replace"))
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            raw = meta.get("caption")
            if isinstance(raw, (list, dict)):
                counts.skipped_bad_record += 1
                return None
            if raw is not None and not isinstance(raw, (str, bytes)):
                raw = str(raw)
    return clean_caption(raw, counts, max_chars)


def decode_sample(sample: dict, counts: Counts, max_chars: int = DEFAULT_MAX_CAPTION_CHARS):
    """(uint8 image (H, W, 3), caption) of a raw sample, or None (counted) to skip it."""
    if sample.get("__too_large__"):
        counts.skipped_too_large += 1
        return None
    caption = sample_caption(sample, counts, max_chars)  # cheap: before the image
    if caption is None:
        return None
    data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    image = decode_image(data, counts)
    if image is None:
        return None
    counts.decoded += 1
    return image, caption


@functools.lru_cache(maxsize=None)
def _crop_fn(seed: int, image_size: int, scale: tuple):
    """tf.function: (uint8 image, int64 index) -> uint8 (size, size, 3), the training crop."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int64)])
    def crop(image, index):
        return augment.train_crop_resize(image, augment.example_seed(seed, index, 0), image_size, scale)

    return crop


def crop_index(url: str, key: str, epoch: int) -> int:
    """The example index of the crop's randomness: pipeline.collection_crop's (crc32 of the
    "url:key" a collection gives a tar sample, the epoch above bit 32)."""
    return zlib.crc32(f"{url}:{key}".encode("utf-8", "surrogateescape")) | (int(epoch) << 32)


_STOP = object()


class ShardTrainData(GlobalBatches):
    """Global (images float32 (B, S, S, 3), token ids int32 (B, L)) batches from tar shards;
    see the module doc. `state` is what `state()` returned (this process's), to resume."""

    def __init__(self, data_config, batch_size: int, cfg, mesh, rules, position: int = 0, state=None, *,
                 process_index: int | None = None, process_count: int | None = None):
        super().__init__(batch_size, position, [shd.batch_sharding(mesh, 4, rules), shd.batch_sharding(mesh, 2, rules)])
        if process_rows(self.shardings[1], self.batch_size) != self.rows:
            raise ValueError("image and text batches are sharded differently")
        d = data_config
        self.local_batch = self.rows[1] - self.rows[0]
        self.seed = int(d.get("seed", 0))
        self.image_size = int(cfg.vision.image_size)
        self.scale = tuple(float(x) for x in (d.get("crop_scale", None) or (0.9, 1.0)))
        self.max_chars = int(d.get("max_caption_chars", DEFAULT_MAX_CAPTION_CHARS) or DEFAULT_MAX_CAPTION_CHARS)
        self._tokenize = make_text_tokenizer(cfg.text, d.get("tokenizer", None))
        self._crop = _crop_fn(self.seed, self.image_size, self.scale)
        stream_state = None
        if state is not None:
            stream_state = state.get("stream", state)
            saved = state.get("position", None)
            if saved is not None and int(saved) != self.position:
                raise ConfigError(f"the shard stream state was saved at position {saved}, resuming at "
                                  f"{self.position}: save state() together with the position it belongs to")
        elif self.position:
            log.warning("resuming at position %d without a shard stream state: the shard stream starts "
                        "from its beginning (not the examples an uninterrupted run would see)", self.position)
        pi = jax.process_index() if process_index is None else int(process_index)
        pc = jax.process_count() if process_count is None else int(process_count)
        self.stream = stream_from_config(d, pi, pc, state=stream_state)
        self.counts_ = Counts()
        self._counts_lock = threading.Lock()
        self._state = {"position": self.position, "stream": self.stream.state()}
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, int(d.get("decode_threads", 4) or 4)),
                                                           thread_name_prefix="shard-decode")
        self._queue: queue.Queue = queue.Queue(max(1, int(d.get("host_prefetch", 2) or 2)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="shard-batches", daemon=True)
        self._thread.start()
        self._normalize = normalize_on_device(self.shardings[0])
        self._next_placed = DevicePrefetch(self._place, int(d.get("device_prefetch", 2)))

    # ------------------------------------------------------------------ producer thread
    def _prepare(self, sample):
        counts = Counts()
        out = decode_sample(sample, counts, self.max_chars)
        if out is not None:
            image, caption = out
            idx = crop_index(sample["__url__"], sample["__key__"], sample["__epoch__"])
            out = (self._crop(image, np.int64(idx)).numpy(), caption)
        with self._counts_lock:
            self.counts_.merge(counts)
        return out

    def _local_batch(self):
        """(uint8 images (b, S, S, 3), captions, stream state after the batch's last sample)."""
        images, caps = [], []
        while len(images) < self.local_batch:
            need = self.local_batch - len(images)
            raws = [next(self.stream) for _ in range(need)]
            for out in self._pool.map(self._prepare, raws):
                if out is not None:
                    images.append(out[0])
                    caps.append(out[1])
        return np.stack(images), caps, self.stream.state()

    def _produce(self):
        try:
            while not self._stop.is_set():
                item = self._local_batch()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer (StopIteration included)
            self._put_final(e)

    def _put_final(self, e):
        while not self._stop.is_set():
            try:
                self._queue.put((_STOP, e), timeout=0.5)
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------------ consumer
    def _place(self):
        item = self._queue.get()
        if item[0] is _STOP:
            self._queue.put(item)  # later calls see it too
            e = item[1]
            if isinstance(e, StopIteration):
                raise RuntimeError("the shard stream ended (finite epochs)") from None
            raise e
        local_imgs, caps, state = item
        pixels, ids = self.global_arrays([local_imgs, self._tokenize(caps)])
        return (self._normalize(pixels), ids), state

    def __next__(self):
        batch, stream_state = self._next_placed()
        self.position += self.batch_size  # batches handed out, not the ones prefetched
        self._state = {"position": self.position, "stream": stream_state}
        return batch

    def state(self) -> dict:
        """This process's position after the last batch handed out: {"position": examples
        handed out (global), "stream": ShardStream.state()}; JSON-able."""
        return self._state

    def counts(self) -> dict:
        """Decode counters (clipjax.data.images.Counts) and the stream's shard counters
        (shards_skipped, read_retries, samples, ...), flat; they include read-ahead."""
        with self._counts_lock:
            out = self.counts_.as_dict()
        out.update(self.stream.counts.as_dict())
        return out

    def close(self) -> None:
        self._stop.set()
        self._next_placed = None
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.stream.close()
        self._it = None


def make_shard_train_data(config, cfg, mesh, rules, position: int = 0, state=None) -> ShardTrainData:
    return ShardTrainData(config.data, config.batch_size, cfg, mesh, rules, position, state)
