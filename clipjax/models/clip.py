"""The CLIP model: an image tower and a text tower projected into one embedding space."""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.bert import BertEncoder
from clipjax.models.config import CLIPConfig
from clipjax.models.layers import dtype_of, logical
from clipjax.models.resnet import ModifiedResNet
from clipjax.models.text import CausalTextTransformer
from clipjax.models.vit import VisionTransformer


def l2_normalize(x, eps: float = 0.0):
    # No eps by default: matches transformers / open_clip (x / ||x||) to the last bit.
    x = x.astype(jnp.float32)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def build_image_tower(cfg: CLIPConfig, name="visual", embed_dim="default"):
    embed_dim = cfg.embed_dim if embed_dim == "default" else embed_dim
    common = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
    if cfg.vision.kind == "vit":
        return VisionTransformer(cfg.vision, embed_dim, remat_policy=cfg.remat_policy,
                                 attention_impl=cfg.attention_impl, **common)
    if cfg.vision.kind == "resnet":
        return ModifiedResNet(cfg.vision, embed_dim, **common)
    raise ValueError(f"Unknown vision tower kind {cfg.vision.kind!r} (expected 'vit' or 'resnet')")


def build_text_tower(cfg: CLIPConfig, name="text", embed_dim="default"):
    embed_dim = cfg.embed_dim if embed_dim == "default" else embed_dim
    common = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat_policy=cfg.remat_policy,
                  attention_impl=cfg.attention_impl, name=name)
    if cfg.text.kind == "causal":
        return CausalTextTransformer(cfg.text, embed_dim, **common)
    if cfg.text.kind in ("bert", "distilbert"):
        return BertEncoder(cfg.text, embed_dim, **common)
    raise ValueError(f"Unknown text tower kind {cfg.text.kind!r} (expected 'causal', 'bert' or 'distilbert')")


class CLIP(nn.Module):
    """`encode_image` / `encode_text` return projected, un-normalised embeddings (as
    transformers' get_*_features); `__call__` returns normalised embeddings and the logits."""

    cfg: CLIPConfig

    def setup(self):
        cfg = self.cfg
        self.visual = build_image_tower(cfg)
        self.text = build_text_tower(cfg)
        pdtype = dtype_of(cfg.param_dtype)
        self.logit_scale = self.param(
            "logit_scale", logical(nn.initializers.constant(cfg.logit_scale_init), ()), (), pdtype
        )
        if cfg.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", logical(nn.initializers.constant(cfg.logit_bias_init), ()), (), pdtype
            )
        else:
            self.logit_bias = None

    def encode_image(self, images, train: bool = False, normalize: bool = False):
        if self.cfg.vision.kind == "resnet":
            out = self.visual(images, train=train)
        else:
            out = self.visual(images, deterministic=not train)
        e = out["embeds"]
        return l2_normalize(e) if normalize else e

    def encode_text(self, ids, attention_mask=None, train: bool = False, normalize: bool = False):
        out = self.text(ids, attention_mask=attention_mask, deterministic=not train)
        e = out["embeds"]
        return l2_normalize(e) if normalize else e

    def __call__(self, images, ids, attention_mask=None, train: bool = False):
        img = self.encode_image(images, train=train, normalize=True)
        txt = self.encode_text(ids, attention_mask, train=train, normalize=True)
        scale = jnp.exp(self.logit_scale.astype(jnp.float32))
        logits_per_image = scale * img @ txt.T
        if self.logit_bias is not None:
            logits_per_image = logits_per_image + self.logit_bias.astype(jnp.float32)
        return dict(image_embeds=img, text_embeds=txt, logits_per_image=logits_per_image,
                    logits_per_text=logits_per_image.T, logit_scale=scale)


def init_inputs(cfg: CLIPConfig) -> tuple:
    """Example (images, ids) that create every parameter of CLIP(cfg)."""
    s = cfg.vision.image_size
    return jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, cfg.text.context_length), jnp.int32)
