"""CLIP at inference: `LoadedCLIP` (what clipjax.load returns for a CLIP checkpoint), and a
fresh model from a preset (`create_model`, `init_variables`)."""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.clip import CLIP, init_inputs
from clipjax.models.config import CLIPConfig
from clipjax.models.presets import get_preset
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import tokenize


def create_model(name_or_cfg: Union[str, CLIPConfig], **overrides) -> CLIP:
    """A Flax CLIP module from a preset name ("ViT-B/32", "RN50", "tiny-vit", ...) or a config;
    `overrides` replace top-level config fields (dtype="bfloat16", remat_policy="full", ...)."""
    cfg = get_preset(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return CLIP(cfg.replace(**overrides) if overrides else cfg)


def init_variables(cfg: CLIPConfig, rng=None) -> dict:
    """Random initial variables for `cfg` (unboxed: plain arrays)."""
    import flax.linen as nn

    rng = jax.random.PRNGKey(0) if rng is None else rng
    return nn.unbox(CLIP(cfg).init(rng, *init_inputs(cfg)))


class LoadedCLIP:
    """A CLIP model with its weights, ready for inference.

    encode_image(images) takes PIL images, file paths or uint8/float HWC arrays of any size
    and preprocesses them as CLIP does; pass preprocessed=True for arrays that already are
    (B, S, S, 3) normalised. encode_text takes strings (tokenised with CLIP's BPE) or ids.
    Embeddings are L2-normalised unless normalize=False.
    """

    def __init__(self, cfg: CLIPConfig, variables: dict):
        self.cfg = cfg
        self.model = CLIP(cfg)
        pdtype = jnp.dtype(cfg.param_dtype)
        self.variables = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, pdtype if jnp.issubdtype(np.asarray(x).dtype, jnp.floating) else None),
            variables)
        self._image_fn = jax.jit(functools.partial(self.model.apply, method=CLIP.encode_image), static_argnames=("normalize",))
        self._text_fn = jax.jit(functools.partial(self.model.apply, method=CLIP.encode_text), static_argnames=("normalize",))

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    @property
    def logit_scale(self) -> float:
        """The multiplier exp(logit_scale) applied to cosine similarities."""
        return float(np.exp(np.asarray(self.variables["params"]["logit_scale"], np.float32)))

    @property
    def logit_bias(self) -> Optional[float]:
        b = self.variables["params"].get("logit_bias")
        return None if b is None else float(b)

    def preprocess(self, images) -> np.ndarray:
        return preprocess_images(images, self.image_size)

    def tokenize(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        if self.cfg.text.kind != "causal":
            raise ValueError("this model has a BERT text tower: pass token ids from its WordPiece tokenizer")
        return tokenize(texts, context_length=self.cfg.text.context_length)

    def encode_image(self, images, preprocessed: bool = False, normalize: bool = True, batch_size: int = 64):
        """(N, embed_dim) embeddings; an empty list gives (0, embed_dim), as encode_text."""
        if isinstance(images, (list, tuple)) and not images:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        x = np.asarray(images, np.float32) if preprocessed else self.preprocess(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"preprocessed images must be (B, H, W, 3); got {x.shape}")
        out = [self._image_fn(self.variables, jnp.asarray(x[i:i + batch_size]), normalize=normalize)
               for i in range(0, len(x), batch_size)]
        return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def encode_text(self, texts, normalize: bool = True, batch_size: int = 256):
        """(N, embed_dim) embeddings of strings or token ids; an empty list gives (0, embed_dim)."""
        if isinstance(texts, (list, tuple)) and not texts:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        if isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], str)):
            ids = self.tokenize(texts)
        else:
            ids = np.asarray(texts)
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError("encode_text takes strings or integer token ids")
            ids = np.atleast_2d(ids).astype(np.int32)
        out = [self._text_fn(self.variables, jnp.asarray(ids[i:i + batch_size]), normalize=normalize)
               for i in range(0, len(ids), batch_size)]
        return np.concatenate([np.asarray(o) for o in out])

    def similarity(self, image_embeds, text_embeds) -> np.ndarray:
        """Logits: logit_scale * cosine similarity (+ logit_bias for sigmoid models)."""
        logits = self.logit_scale * np.asarray(image_embeds) @ np.asarray(text_embeds).T
        return logits + self.logit_bias if self.logit_bias is not None else logits

    def zero_shot_probs(self, images, texts, preprocessed: bool = False) -> np.ndarray:
        """Softmax over `texts` for each image (as transformers' zero-shot pipeline does)."""
        logits = self.similarity(self.encode_image(images, preprocessed), self.encode_text(texts))
        return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
