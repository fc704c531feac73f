"""The public inference API: `clipjax.load(PATH)` and what it returns."""

from __future__ import annotations

import dataclasses

import functools
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.convert.common import CheckpointError
from clipjax.models.clip import CLIP
from clipjax.models.config import CLIPConfig
from clipjax.models.presets import get_preset


def create_model(name_or_cfg: Union[str, CLIPConfig], **overrides) -> CLIP:
    """A Flax CLIP module from a preset name ("ViT-B/32", "RN50", "tiny-vit", ...) or a config;
    `overrides` replace top-level config fields (dtype="bfloat16", remat_policy="full", ...)."""
    cfg = get_preset(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return CLIP(cfg.replace(**overrides) if overrides else cfg)


def init_variables(cfg: CLIPConfig, rng=None) -> dict:
    """Random initial variables for `cfg` (unboxed: plain arrays)."""
    import flax.linen as nn

    rng = jax.random.PRNGKey(0) if rng is None else rng
    s = cfg.vision.image_size
    return nn.unbox(CLIP(cfg).init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, cfg.text.context_length), jnp.int32)))


def detect_format(path: str) -> str:
    """"clipjax" (Orbax directory), "hf" (transformers CLIPModel directory) or "openai"
    (a state-dict file in the OpenAI / open_clip layout)."""
    from clipjax.checkpoint import is_clipjax_checkpoint
    from clipjax.convert.common import hf_model_type
    from clipjax.convert.hf_clip import is_hf_clip_dir

    if not os.path.exists(path):
        raise CheckpointError(f"No such checkpoint: {path}")
    if os.path.isdir(path):
        if is_hf_clip_dir(path):
            return "hf"
        mt = hf_model_type(path)
        if mt is not None:
            raise CheckpointError(f"{path} is a transformers {mt!r} model directory, not a CLIP model")
        if is_clipjax_checkpoint(path) or is_clipjax_checkpoint(os.path.join(path, "checkpoints")):
            return "clipjax"
        raise CheckpointError(
            f"{path} is neither a clipjax (Orbax) checkpoint nor a transformers CLIP directory")
    return "openai"


def read_any(path: str) -> tuple[CLIPConfig, dict]:
    """(config, variables) from any checkpoint format clipjax reads."""
    fmt = detect_format(path)
    if fmt == "clipjax":
        from clipjax.checkpoint import is_clipjax_checkpoint, load_clipjax

        # a training workdir keeps its checkpoints under checkpoints/
        run_dir = os.path.join(path, "checkpoints")
        return load_clipjax(run_dir if is_clipjax_checkpoint(run_dir) else path)
    if fmt == "hf":
        from clipjax.convert.hf_clip import load_hf_clip

        return load_hf_clip(path)
    from clipjax.convert.openai_clip import load_openai

    return load_openai(path)


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
        from clipjax.preprocess import preprocess_images

        return preprocess_images(images, self.image_size)

    def tokenize(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        if self.cfg.text.kind != "causal":
            raise ValueError("this model has a BERT text tower: pass token ids from its WordPiece tokenizer")
        from clipjax.tokenizer import tokenize

        return tokenize(texts, context_length=self.cfg.text.context_length)

    def encode_image(self, images, preprocessed: bool = False, normalize: bool = True, batch_size: int = 64):
        x = np.asarray(images, np.float32) if preprocessed else self.preprocess(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"preprocessed images must be (B, H, W, 3); got {x.shape}")
        out = [self._image_fn(self.variables, jnp.asarray(x[i:i + batch_size]), normalize=normalize)
               for i in range(0, len(x), batch_size)]
        return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def encode_text(self, texts, normalize: bool = True, batch_size: int = 256):
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


class LoadedCLIPSeg:
    """A CLIPSeg model ready for inference: `segment(images, prompts)` -> mask logits
    (B, H, W) at the model's input resolution, as transformers returns them."""

    def __init__(self, cfg, variables: dict):
        import functools

        from clipjax.models.clipseg import CLIPSeg

        self.cfg, self.variables = cfg, variables
        model = CLIPSeg(cfg)
        self._seg = jax.jit(lambda v, x, c: model.apply(v, x, conditional_embeddings=c))
        self._txt = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_text))
        self._img = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_image))

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def conditional_embeddings(self, prompts) -> np.ndarray:
        """One vector per prompt: a string (text prompt) or an image (visual prompt)."""
        from clipjax.preprocess import preprocess_images
        from clipjax.tokenizer import tokenize

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = []
        for p in prompts:
            if isinstance(p, str):
                ids = tokenize([p], context_length=self.cfg.clip.text.context_length)
                out.append(np.asarray(self._txt(self.variables, jnp.asarray(ids)))[0])
            else:
                x = preprocess_images([p], self.cfg.clip.vision.image_size)
                out.append(np.asarray(self._img(self.variables, jnp.asarray(x)))[0])
        return np.stack(out)

    def segment(self, images, prompts, preprocessed: bool = False) -> np.ndarray:
        """images: PIL / paths / arrays (or preprocessed (B, S, S, 3)); prompts: strings or
        images, one per image, or several prompts for a single image."""
        from clipjax.preprocess import preprocess_images

        x = np.asarray(images, np.float32) if preprocessed else preprocess_images(images, self.image_size)
        cond = self.conditional_embeddings(prompts)
        if len(x) == 1 and len(cond) > 1:
            x = np.repeat(x, len(cond), axis=0)
        if len(x) != len(cond):
            raise ValueError(f"{len(x)} images but {len(cond)} prompts")
        return np.asarray(self._seg(self.variables, jnp.asarray(x), jnp.asarray(cond)))


def load(path: str, dtype: Optional[str] = None):
    """Load a clipjax checkpoint (or a training workdir: its latest step), a transformers CLIP
    directory, or an OpenAI / open_clip layout state-dict file -> LoadedCLIP; a CLIPSeg
    checkpoint or transformers CLIPSeg directory -> LoadedCLIPSeg; a Tag2Text training run ->
    LoadedTag2Text (clipjax.tag2text_api). `dtype` sets compute dtype."""
    from clipjax.convert.hf_clipseg import is_hf_clipseg_dir, load_hf_clipseg
    from clipjax.models.clipseg import CLIPSegConfig

    if os.path.isdir(path) and is_hf_clipseg_dir(path):
        cfg, variables = load_hf_clipseg(path)
    else:
        cfg, variables = read_any(path)
    from clipjax.models.tag2text import Tag2TextConfig

    if isinstance(cfg, Tag2TextConfig):
        from clipjax.tag2text_api import LoadedTag2Text

        if dtype is not None:
            cfg = cfg.replace(dtype=dtype)
        return LoadedTag2Text.from_run(path, cfg, variables)
    if isinstance(cfg, CLIPSegConfig):
        if dtype is not None:
            cfg = dataclasses.replace(cfg, clip=cfg.clip.replace(dtype=dtype))
        return LoadedCLIPSeg(cfg, variables)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    return LoadedCLIP(cfg, variables)
