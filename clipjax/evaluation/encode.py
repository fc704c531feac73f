"""Feature extraction sharded over a device mesh: each global batch is split over the mesh's
batch axes (each process supplies the rows its devices hold), only the embeddings come back."""

from __future__ import annotations

import jax
import numpy as np
import flax.linen as nn

from clipjax import sharding as shd


def sharded_encoder(fn, mesh, rules, batch: int):
    """`encode(variables, x (N, ...)) -> (N, E) host numpy`: x is split into global batches of
    `batch` rows (padded at the end), each sharded over the batch axes of `mesh`."""
    jitted = jax.jit(fn)

    def encode(variables, x: np.ndarray) -> np.ndarray:
        n = len(x)
        sharding = shd.batch_sharding(mesh, x.ndim, rules)
        out = []
        for i in range(0, n, batch):
            chunk = x[i:i + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            arr = jax.make_array_from_callback(chunk.shape, sharding, lambda idx, c=chunk: c[idx])
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                emb = jitted(variables, arr)
            out.append(_gather(emb)[:min(batch, n - i)])
        return np.concatenate(out)

    return encode


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
