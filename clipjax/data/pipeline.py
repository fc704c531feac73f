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


class SyntheticTrainData:
    """Global batches of procedurally drawn shapes and captions."""

    def __init__(self, config, cfg, mesh, rules, position: int = 0):
        from clipjax.tokenizer import tokenize

        self._tokenize = lambda caps: tokenize(caps, context_length=cfg.text.context_length)
        self.batch_size = int(config.batch_size)
        nproc = jax.process_count()
        if self.batch_size % nproc:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by {nproc} processes")
        self.local = self.batch_size // nproc
        self.seed = int(config.data.seed)
        self.image_size = cfg.vision.image_size
        self.position = int(position)
        self.img_sharding = shd.batch_sharding(mesh, 4, rules)
        self.ids_sharding = shd.batch_sharding(mesh, 2, rules)

    def __iter__(self):
        return self

    def __next__(self):
        start = self.position + jax.process_index() * self.local
        imgs, _, caps = synthetic.draw_batch(self.seed, start, self.local, self.image_size)
        self.position += self.batch_size
        images = jax.make_array_from_process_local_data(self.img_sharding, normalize_uint8(imgs))
        ids = jax.make_array_from_process_local_data(self.ids_sharding, self._tokenize(caps))
        return images, ids


def make_train_data(config, cfg, mesh, rules, position: int = 0):
    name = config.data.name
    if name == "synthetic_shapes":
        return SyntheticTrainData(config, cfg, mesh, rules, position)
    raise ValueError(f"unknown dataset {name!r}; available: synthetic_shapes")
