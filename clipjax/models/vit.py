"""Vision Transformer image tower: CLIP's layout, and Hugging Face `ViTModel`'s through options.

CLIP: bias-free patch conv, class token, learned positions, ln_pre, pre-LN blocks, ln_post
on the class token, projection. HF ViTModel: patch conv with bias, no ln_pre, exact GELU,
eps 1e-12, final LN, dense+tanh pooler. Other input sizes interpolate the position grid with
a PyTorch-exact bicubic kernel (jax.image.resize's bicubic differs from PyTorch's).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.config import VisionConfig
from clipjax.models.layers import (activation, constrain, dense, dtype_of, layer_norm, logical, projection,
                                   tower_transformer)


def _cubic1(x, a):
    """PyTorch's cubic_convolution1 (|x| <= 1), in x's dtype."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x, a):
    """PyTorch's cubic_convolution2 (1 < |x| < 2), in x's dtype."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix M with M @ x == F.interpolate(x, out, mode="bicubic", align_corners=False)
    along one axis: half-pixel centres, A=-0.75, border indices clamped. The source positions and
    the four weights are computed in float32 as PyTorch's x86 CPU kernel does for float32
    (upsample_bicubic2d: scale = in/out, scale * (o + 0.5) - 0.5 in one fused multiply-add,
    floor, t clamped to [0, 1]); in float64 the result moves by up to ~1e-5 of the grid's scale
    at sizes such as 24 -> 37."""
    f = np.float32
    a = f(-0.75)
    m = np.zeros((out_size, in_size), np.float64)
    scale = f(in_size) / f(out_size)
    for o in range(out_size):
        src = f(np.float64(scale) * np.float64(f(o) + f(0.5)) - 0.5)  # one rounding: the compiled kernel's FMA
        x0 = min(int(np.floor(src)), in_size - 1)
        t = min(max(src - f(x0), f(0)), f(1))
        weights = (_cubic2(t + f(1), a), _cubic1(t, a), _cubic1(f(1) - t, a), _cubic2((f(1) - t) + f(1), a))
        for k, w in zip(range(-1, 3), weights):
            m[o, min(max(x0 + k, 0), in_size - 1)] += float(w)
    return m.astype(np.float32)


def resize_pos_grid(grid: jnp.ndarray, out_h: int, out_w: int) -> jnp.ndarray:
    """Bicubically resize a (h, w, d) position grid as PyTorch's F.interpolate does."""
    h, w, _ = grid.shape
    if (h, w) == (out_h, out_w):
        return grid
    mh = jnp.asarray(torch_bicubic_matrix(h, out_h))
    mw = jnp.asarray(torch_bicubic_matrix(w, out_w))
    grid = jnp.einsum("oh,hwd->owd", mh, grid.astype(jnp.float32), precision="highest")
    return jnp.einsum("pw,owd->opd", mw, grid, precision="highest")


class VisionTransformer(nn.Module):
    """Returns dict(tokens=encoder output (B, 1+N, W) before the final norm (after it with
    norm_all_tokens),
    pooled=normed class token (after the pooler if any), embeds=projection of pooled or None,
    hidden=every layer's output stacked (L, B, 1+N, W) when return_hidden), and, only when
    called with dense_embeds=True, also dense_embeds=(B, N, embed_dim): MaskCLIP's per-patch embeddings
    (`maskclip_patch_embeds`)."""

    cfg: VisionConfig
    embed_dim: Optional[int] = None  # None: no projection (a bare ViTModel)
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None
    # BLIP / timm ViT (Tag2Text's ViT tower): ln_post normalises every token, and `tokens` is
    # returned after it
    norm_all_tokens: bool = False

    @nn.compact
    def __call__(self, images, return_hidden: bool = False, deterministic: bool = True, dense_embeds: bool = False):
        cfg = self.cfg
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        p = cfg.patch_size
        x = nn.Conv(
            cfg.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=cfg.patch_bias,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=logical(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "embed")),
            bias_init=logical(nn.initializers.zeros, ("embed",)),
            name="patch_embed",
        )(images.astype(dtype))
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)

        scale = cfg.width**-0.5
        cls = self.param("cls", logical(nn.initializers.normal(scale), ("embed",)), (d,), pdtype)
        grid0 = cfg.image_size // p
        pos = self.param(
            "pos_embed", logical(nn.initializers.normal(scale), ("length", "embed")), (grid0 * grid0 + 1, d), pdtype
        )
        if (gh, gw) != (grid0, grid0):
            patch_pos = resize_pos_grid(pos[1:].reshape(grid0, grid0, d), gh, gw).reshape(gh * gw, d)
            pos = jnp.concatenate([pos[:1], patch_pos.astype(pos.dtype)], axis=0)

        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, d)), x], axis=1)
        x = constrain(x + pos.astype(dtype))
        if cfg.ln_pre:
            x = layer_norm(cfg.ln_eps, dtype, pdtype, "ln_pre")(x)

        x_in = x
        x, hidden = tower_transformer(self, cfg, norm_first=True, deterministic=deterministic,
                                      return_hidden=return_hidden or dense_embeds)(x)

        if self.norm_all_tokens:
            x = layer_norm(cfg.ln_eps, dtype, pdtype, "ln_post")(x)
            pooled = x[:, 0]
        else:
            pooled = layer_norm(cfg.ln_eps, dtype, pdtype, "ln_post")(x[:, 0])
        if cfg.pooler:
            pooled = jnp.tanh(dense(d, ("embed", "embed_out"), dtype, pdtype, name="pooler")(pooled))
        out = dict(tokens=x, pooled=pooled, embeds=projection(self, pooled), hidden=hidden if return_hidden else None)
        if dense_embeds:
            if self.norm_all_tokens or cfg.pooler or self.embed_dim is None:
                raise ValueError("dense (MaskCLIP) embeddings need CLIP's layout: ln_post on the class token, "
                                 "no pooler, a projection")
            last_in = hidden[-2] if cfg.layers > 1 else x_in  # the last block's input
            params = nn.unbox(self.variables["params"])
            last = jax.tree_util.tree_map(lambda a: a[-1], params["transformer"]["layers"])
            out["dense_embeds"] = maskclip_patch_embeds(last_in[:, 1:], last, params["ln_post"],
                                                        params["proj"]["kernel"], cfg.act, cfg.ln_eps)
        return out


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def maskclip_patch_embeds(tokens, block, ln_post, proj, act: str, eps: float):
    """MaskCLIP's dense features (Zhou et al. 2022, "Extract Free Dense Labels from CLIP"; as its
    code computes them for a ViT): the last block run with its query-key mixing removed, i.e.
    every token attends only to itself, so the attention output is the value projection followed
    by the output projection; the block's residual and MLP are kept, then ln_post and the image
    projection, token by token:

        v = x + out(value(ln1(x)));  v = v + mlp(ln2(v));  dense = ln_post(v) @ proj

    tokens (B, N, W): the last block's input patch tokens; block: that block's parameters
    (attn/{value,out}, ln1, ln2, mlp/{fc1,fc2}); returns (B, N, embed_dim), float32."""
    f32 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
    x, block, ln_post, proj = f32(tokens), f32(block), f32(ln_post), f32(proj)
    attn, mlp = block["attn"], block["mlp"]
    h = _ln(x, block["ln1"], eps)
    v = jnp.einsum("bnd,dhk->bnhk", h, attn["value"]["kernel"]) + attn["value"]["bias"]
    x = x + jnp.einsum("bnhk,hkd->bnd", v, attn["out"]["kernel"]) + attn["out"]["bias"]
    h = _ln(x, block["ln2"], eps) @ mlp["fc1"]["kernel"] + mlp["fc1"]["bias"]
    x = x + activation(act)(h) @ mlp["fc2"]["kernel"] + mlp["fc2"]["bias"]
    return _ln(x, ln_post, eps) @ proj
