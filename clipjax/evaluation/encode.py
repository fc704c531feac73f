"""Feature extraction sharded over a device mesh: each global batch is split over the mesh's
batch axes (each process supplies the rows its devices hold), only the embeddings come back.

Every evaluator encodes through these, so one code path serves a loaded model replicated on all
local devices (evaluate.py, `replicate_on_local_devices`) and the sharded training state."""

from __future__ import annotations

import functools

import jax
import numpy as np
import flax.linen as nn

from clipjax import sharding as shd
from clipjax.models.clip import CLIP
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import text_attention_mask


def sharded_encoder(fn, mesh, rules, batch: int):
    """`encode(variables, *xs) -> host numpy`: the arrays xs (same leading size N) are split
    into global batches of `batch` rows (the last padded with zeros, its pad rows dropped),
    each sharded over the batch axes of `mesh`; `fn(variables, *batch_arrays)` returns one
    array with a leading batch axis."""
    jitted = jax.jit(fn)

    def pad(chunk):
        if len(chunk) == batch:
            return chunk
        return np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])

    def encode(variables, *xs) -> np.ndarray:
        n = len(xs[0])
        out = []
        for i in range(0, n, batch):
            arrs = []
            for x in xs:
                chunk = pad(np.asarray(x[i:i + batch]))
                sharding = shd.batch_sharding(mesh, chunk.ndim, rules)
                arrs.append(jax.make_array_from_callback(chunk.shape, sharding, lambda idx, c=chunk: c[idx]))
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                emb = jitted(variables, *arrs)
            out.append(_gather(emb)[:min(batch, n - i)])
        return np.concatenate(out)

    return encode


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(batch: int, mesh) -> int:
    """`batch` rounded up to a multiple of the mesh's devices (global batches split evenly)."""
    n = mesh.devices.size
    return max(n, (batch + n - 1) // n * n)


def clip_encoders(cfg, mesh, rules, batch: int):
    """(encode_images(variables, pixels), encode_ids(variables, ids)) of a CLIP config: jitted,
    sharded over `mesh`, returning L2-normalised host embeddings. BERT towers get their padding
    mask from the ids."""
    model = CLIP(cfg)
    images = sharded_encoder(functools.partial(model.apply, method=CLIP.encode_image, normalize=True),
                             mesh, rules, batch)
    ids = sharded_encoder(lambda v, t: model.apply(v, t, attention_mask=text_attention_mask(cfg.text, t),
                                                   method=CLIP.encode_text, normalize=True), mesh, rules, batch)
    return images, ids


class CLIPEncoders:
    """A CLIP's image and text encoders, compiled once for `mesh`, applied to whichever
    variables `bind` is given: the evaluators take the bound functions, so the same compiled
    code scores every periodic evaluation of a run and a loaded checkpoint alike.
    `tokenize(list of str) -> ids` is the model's own (BPE, or a BERT tower's WordPiece)."""

    def __init__(self, cfg, mesh, rules, batch: int, tokenize):
        self.batch = global_batch(batch, mesh)
        self.image_size = cfg.vision.image_size
        self.tokenize = tokenize
        self._images, self._ids = clip_encoders(cfg, mesh, rules, self.batch)

    def bind(self, variables):
        """(encode_pixels(preprocessed images), encode_texts(strings)) -> normalised host
        embeddings of `variables`."""
        return (lambda pixels: self._images(variables, pixels),
                lambda texts: self._ids(variables, self.tokenize(list(texts))))

    def preprocessed(self, batches):
        """(uint8 images, rest) batches -> (pixels, rest), preprocessed as clipjax.load does."""
        for images, rest in batches:
            yield preprocess_images(images, self.image_size), rest


def labelled_features(encode_pixels, batches, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of (pixels, labels) batches; `progress(n)` after each batch."""
    feats, labels = [], []
    for pixels, lab in batches:
        feats.append(encode_pixels(pixels))
        labels.append(np.asarray(lab))
        if progress is not None:
            progress(len(pixels))
    return np.concatenate(feats), np.concatenate(labels)


def replicate_on_local_devices(variables):
    """(mesh of every local device on "data", `variables` replicated on it): a loaded model
    runs through the same sharded encoders as the training state."""
    mesh = shd.make_mesh({"data": -1})
    return mesh, jax.device_put(variables, shd.replicated(mesh))
