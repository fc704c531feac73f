"""A CLIP checkpoint as the search's encoder: batched image encoding sharded over every local
device (clipjax.evaluation.encode.CLIPEncoders, the evaluators' code path), text and single
query images through LoadedCLIP, and the checkpoint's identity (what an index records and
checks)."""

from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

import jax
import numpy as np

from clipjax import sharding as shd
from clipjax.errors import ConfigError
from clipjax.evaluation.encode import CLIPEncoders, replicate_on_local_devices
from clipjax.inference.clip import LoadedCLIP
from clipjax.inference.load import load
from clipjax.preprocess import preprocess_images


class IndexMismatchError(ConfigError):
    """An index used with a checkpoint other than the one that built it."""


def fingerprint(clip: LoadedCLIP) -> str:
    """A hash of the model config and every weight (path-independent: the same weights moved
    or converted to another format give the same fingerprint)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps(clip.cfg.to_dict(), sort_keys=True, default=str).encode())
    leaves = jax.tree_util.tree_flatten_with_path(clip.variables)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf, np.float32 if np.issubdtype(np.asarray(leaf).dtype, np.floating)
                                            else None))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def identity(clip: LoadedCLIP, checkpoint: str) -> dict:
    return {"checkpoint": str(checkpoint), "fingerprint": fingerprint(clip),
            "embed_dim": int(clip.cfg.embed_dim), "image_size": int(clip.image_size)}


def check_identity(index_dir: str, built: dict, given: dict) -> None:
    """IndexMismatchError naming both checkpoints when `given` is not the model of `built`."""
    if built.get("fingerprint") == given["fingerprint"] and int(built.get("embed_dim", -1)) == given["embed_dim"]:
        return
    why = ("embedding width differs" if int(built.get("embed_dim", -1)) != given["embed_dim"]
           else "weights differ")
    raise IndexMismatchError(
        f"index {index_dir} was built with checkpoint {built.get('checkpoint')} (fingerprint "
        f"{built.get('fingerprint')}, embedding width {built.get('embed_dim')}), not with {given['checkpoint']} "
        f"(fingerprint {given['fingerprint']}, embedding width {given['embed_dim']}): {why}. Use the checkpoint "
        "the index was built with, or build a new index with this one")


class Embedder:
    """encode_images(list of uint8 images) / encode_texts(list of str) -> L2-normalised float32
    embeddings of one CLIP checkpoint (a path, or a LoadedCLIP with `checkpoint` naming it)."""

    def __init__(self, checkpoint, batch_size: int = 64, name: Optional[str] = None):
        if isinstance(checkpoint, LoadedCLIP):
            self.clip, self.checkpoint = checkpoint, name or "<in memory>"
        else:
            self.clip, self.checkpoint = load(str(checkpoint)), name or str(checkpoint)
            if not isinstance(self.clip, LoadedCLIP):
                raise ConfigError(f"{checkpoint} is a {type(self.clip).__name__.replace('Loaded', '')} checkpoint; "
                                  "search needs a CLIP checkpoint")
        self.batch_size = int(batch_size)
        self.embed_dim = int(self.clip.cfg.embed_dim)
        self._identity = None
        self._encoders = None

    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = identity(self.clip, self.checkpoint)
        return self._identity

    def _bound(self):
        if self._encoders is None:
            mesh, variables = replicate_on_local_devices(self.clip.variables)
            enc = CLIPEncoders(self.clip.cfg, mesh, shd.DEFAULT_RULES, self.batch_size, self.clip.tokenize)
            self._encoders = enc.bind(variables)
            self.global_batch = enc.batch
        return self._encoders

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Many images: sharded over the local devices in global batches."""
        if not len(images):
            return np.zeros((0, self.embed_dim), np.float32)
        pixels = preprocess_images(list(images), self.clip.image_size)
        return np.asarray(self._bound()[0](pixels), np.float32)

    def encode_query_images(self, images) -> np.ndarray:
        """A few query images (PIL, paths or arrays), without padding to a global batch."""
        return np.asarray(self.clip.encode_image(images), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Through the checkpoint's own tokenizer; texts longer than its context are cut as
        CLIP does (the last token set back to end-of-text)."""
        return np.asarray(self.clip.encode_text(list(texts)), np.float32)
