"""Training input: per-process local batches assembled into global arrays on the mesh.

Examples are addressed by a global index, so the iterator position (examples consumed) is
all a checkpoint needs to resume on exactly the examples an uninterrupted run would see,
whatever the number of processes.
"""

from __future__ import annotations

import jax
import numpy as np

from clipjax import sharding as shd
from clipjax.data import synthetic
from clipjax.preprocess import CLIP_MEAN, CLIP_STD


def normalize_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) already at model size -> CLIP-normalised float32."""
    x = images.astype(np.float32) / 255.0
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


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


class SyntheticTrainData:
    """Global batches of procedurally drawn shapes and captions.

    Example `position + i` is global row i of the next batch; each process draws only the
    rows its devices hold, so the stream is identical for any number of processes."""

    def __init__(self, config, cfg, mesh, rules, position: int = 0):
        from clipjax.tokenizer import tokenize

        self._tokenize = lambda caps: tokenize(caps, context_length=cfg.text.context_length)
        self.batch_size = int(config.batch_size)
        self.seed = int(config.data.seed)
        self.image_size = cfg.vision.image_size
        self.position = int(position)
        self.img_sharding = shd.batch_sharding(mesh, 4, rules)
        self.ids_sharding = shd.batch_sharding(mesh, 2, rules)
        self.rows = process_rows(self.img_sharding, self.batch_size)
        if process_rows(self.ids_sharding, self.batch_size) != self.rows:
            raise ValueError("image and text batches are sharded differently")

    def __iter__(self):
        return self

    def _global(self, sharding, local: np.ndarray):
        start = self.rows[0]
        shape = (self.batch_size,) + local.shape[1:]
        return jax.make_array_from_callback(shape, sharding, lambda index: local[
            slice(index[0].indices(self.batch_size)[0] - start, index[0].indices(self.batch_size)[1] - start)])

    def __next__(self):
        start, stop = self.rows
        imgs, _, caps = synthetic.draw_batch(self.seed, self.position + start, stop - start, self.image_size)
        self.position += self.batch_size
        return (self._global(self.img_sharding, normalize_uint8(imgs)),
                self._global(self.ids_sharding, self._tokenize(caps)))


def make_train_data(config, cfg, mesh, rules, position: int = 0):
    name = config.data.name
    if name == "synthetic_shapes":
        return SyntheticTrainData(config, cfg, mesh, rules, position)
    raise ValueError(f"unknown dataset {name!r}; available: synthetic_shapes")
