"""Swin Transformer image tower (Liu et al. 2021), at parity with transformers' `SwinModel`
and with the Microsoft layout recognize-anything (RAM / Tag2Text) uses as its image encoder.

Patch conv (patch 4) + LayerNorm, no absolute position embedding; stages of pre-LN blocks
with window attention (relative position bias table ((2w-1)^2, heads)), shifted windows on
odd blocks (shift w//2, with the -100 mask), patch merging between stages, a final
LayerNorm. Output tokens are [mean of the normed tokens, normed tokens], which is what RAM's
`SwinTransformer.forward` returns and transformers' (pooler_output, last_hidden_state).

Where a stage's resolution is <= the window, the window becomes that resolution and there is
no shift (both references do this). The bias table is sized for the window each stage has at
`cfg.image_size` (as in the Microsoft code; transformers always sizes it from
`cfg.window_size`, which is only consistent when the two agree). Resolutions that are not a
multiple of the window, or odd ones at a patch merge, are zero-padded bottom/right as
transformers does. Attention goes through `jax.nn.dot_product_attention` with the relative
position bias (+ shift mask) as its `bias`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.config import DictConfig
from clipjax.models.layers import (
    remat_block,
    HeadsIn,
    HeadsOut,
    Mlp,
    constrain,
    dense,
    dtype_of,
    layer_norm,
    logical,
)

SPATIAL = ("batch", None, None, "embed")  # (B, H, W, C) activations


@dataclasses.dataclass(frozen=True)
class SwinConfig(DictConfig):
    image_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple = (2, 2, 6, 2)
    num_heads: tuple = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and equally long")
        for s, h in enumerate(self.num_heads):
            if self.stage_dim(s) % h:
                raise ValueError(f"stage {s}: width {self.stage_dim(s)} is not divisible by {h} heads")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def width(self) -> int:
        """Width of the output tokens (RAM's `vision_width`)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid(self) -> int:
        return -(-self.image_size // self.patch_size)

    def stage_dim(self, s: int) -> int:
        return self.embed_dim * 2**s

    def stage_resolution(self, s: int) -> int:
        """Token grid side of stage `s` at `image_size` (odd sides round up at a merge)."""
        r = self.grid
        for _ in range(s):
            r = (r + 1) // 2
        return r

    def stage_window(self, s: int) -> int:
        """Window of stage `s` at `image_size`: the resolution itself when it is <= window_size."""
        return window_and_shift(self.stage_resolution(s), self.stage_resolution(s), self.window_size)[0]

    def stage_shift(self, s: int) -> int:
        """Shift of the odd blocks of stage `s` at `image_size` (0: no shifted windows)."""
        return window_and_shift(self.stage_resolution(s), self.stage_resolution(s), self.window_size)[1]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d


def window_and_shift(h: int, w: int, window: int) -> tuple[int, int]:
    """(window, shift) for odd blocks on an h x w grid, as both references decide it."""
    if min(h, w) <= window:
        return min(h, w), 0
    return window, window // 2


# Recognize-anything towers (RAM / RAM++ / Tag2Text "swin_b" / "swin_l").
def swin_b_384() -> SwinConfig:
    return SwinConfig(image_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)


def swin_l_384() -> SwinConfig:
    return SwinConfig(image_size=384, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)


def swin_b_224() -> SwinConfig:
    return SwinConfig(image_size=224, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)


def swin_l_224() -> SwinConfig:
    return SwinConfig(image_size=224, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=7)


SWIN_PRESETS = {"swin_b_384": swin_b_384, "swin_l_384": swin_l_384, "swin_b_224": swin_b_224,
                "swin_l_224": swin_l_224}


def swin_preset(name: str) -> SwinConfig:
    if name not in SWIN_PRESETS:
        raise ValueError(f"Unknown Swin preset {name!r}; choose from {sorted(SWIN_PRESETS)}")
    return SWIN_PRESETS[name]()


# ----------------------------------------------------------------------------- static tables


@functools.lru_cache(maxsize=32)
def relative_position_index(window: int) -> np.ndarray:
    """(w*w, w*w) int64 index into the ((2w-1)^2, heads) bias table (the references' buffer)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int64)


def window_partition(x, window: int):
    """(B, H, W, C) -> (B * nW, window*window, C), windows row-major within each image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=32)
def shift_attention_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """(nW, w*w, w*w) float32 mask of the shifted windows: 0 within a region, -100 across."""
    def regions(n):
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int64) + (idx >= n - shift).astype(np.int64)

    img = (regions(h)[:, None] * 3 + regions(w)[None, :]).astype(np.float32)[None, :, :, None]
    win = window_partition(img, window)[..., 0]  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- modules


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows (B*nW, N, C), relative position bias added."""

    num_heads: int
    window: int
    qkv_bias: bool = True
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, mask=None):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        n = self.window * self.window
        table = self.param("rel_pos_table", logical(nn.initializers.truncated_normal(0.02), ("relpos", "heads")),
                           ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
        if x.shape[1] != n:
            raise ValueError(f"windows of {x.shape[1]} tokens, bias table for a {self.window}x{self.window} window")
        bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, self.num_heads)
        bias = bias.transpose(2, 0, 1)[None].astype(jnp.float32)  # (1, heads, N, N)
        if mask is not None:  # (nW, N, N): windows are the inner factor of the leading axis
            nw = mask.shape[0]
            bias = bias + jnp.asarray(mask)[:, None]
            bias = jnp.broadcast_to(bias[None], (x.shape[0] // nw, nw, self.num_heads, n, n))
            bias = bias.reshape(x.shape[0], self.num_heads, n, n)

        def proj(name):
            return HeadsIn(self.num_heads, head_dim, self.qkv_bias, self.dtype, self.param_dtype, name=name)(x)

        names = ("batch", "length", "heads", "kv")
        q = nn.with_logical_constraint(proj("query"), names)
        k = nn.with_logical_constraint(proj("key"), names)
        v = nn.with_logical_constraint(proj("value"), names)
        out = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), implementation=self.attention_impl)
        return HeadsOut(width, True, self.dtype, self.param_dtype, name="out")(out)


class SwinBlock(nn.Module):
    """x (B, H, W, C) -> same: x + attn(ln1 x) in (shifted) windows; x + mlp(ln2 x).
    `window`/`shift` are the block's nominal ones; the grid decides the effective ones."""

    num_heads: int
    window: int
    table_window: int  # window the bias table is sized for
    shift: int = 0
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-5
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        window, shift = window_and_shift(h, w, self.window)
        if not self.shift:
            shift = 0
        if window != self.table_window:
            raise ValueError(
                f"a {h}x{w} grid needs a {window}x{window} window, but this stage's relative position table is "
                f"for {self.table_window}x{self.table_window} (set by SwinConfig.image_size); use the configured "
                "input size or one whose stage resolutions give the same windows")
        x = constrain(x, SPATIAL)
        y = layer_norm(self.ln_eps, self.dtype, self.param_dtype, "ln1")(x)
        ph, pw = (-h) % window, (-w) % window
        if ph or pw:
            y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
        hp, wp = h + ph, w + pw
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = shift_attention_mask(hp, wp, window, shift) if shift else None
        y = WindowAttention(self.num_heads, window, self.qkv_bias, self.dtype, self.param_dtype,
                            self.attention_impl, name="attn")(window_partition(y, window), mask)
        y = window_reverse(y, window, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y[:, :h, :w]
        t = x.reshape(b, h * w, c)
        t = t + Mlp(int(c * self.mlp_ratio), "gelu", self.dtype, self.param_dtype, name="mlp")(
            layer_norm(self.ln_eps, self.dtype, self.param_dtype, "ln2")(t))
        return constrain(t.reshape(b, h, w, c), SPATIAL)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C): 2x2 neighbours concatenated in the order
    (0,0), (1,0), (0,1), (1,1), LayerNorm(4C), Linear(4C, 2C, no bias)."""

    ln_eps: float = 1e-5
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        _, h, w, c = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = layer_norm(self.ln_eps, self.dtype, self.param_dtype, "norm")(x)
        return dense(2 * c, ("embed", "embed_out"), self.dtype, self.param_dtype, use_bias=False, name="reduction")(x)


class SwinTransformer(nn.Module):
    """images (B, H, W, in_chans) -> dict(tokens=(B, 1+L, width) = [mean token, normed tokens],
    pooled=(B, width) mean of the normed tokens, hidden=None or, with return_hidden, a tuple of
    (B, L_s, C_s): the patch embeddings then each stage's output after its merge (transformers'
    `hidden_states`)."""

    cfg: SwinConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, images, return_hidden: bool = False, deterministic: bool = True):
        cfg = self.cfg
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        if images.ndim != 4 or images.shape[-1] != cfg.in_chans:
            raise ValueError(f"expected images (B, H, W, {cfg.in_chans}), got {images.shape}")
        block_cls = remat_block(SwinBlock, self.remat_policy)

        p = cfg.patch_size
        x = images.astype(dtype)
        _, h, w, _ = x.shape
        if h % p or w % p:
            x = jnp.pad(x, ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
        x = nn.Conv(
            cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=dtype, param_dtype=pdtype,
            kernel_init=logical(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "embed")),
            bias_init=logical(nn.initializers.zeros, ("embed",)), name="patch_embed",
        )(x)
        x = layer_norm(cfg.ln_eps, dtype, pdtype, "patch_norm")(x)
        b = x.shape[0]
        hidden = [x.reshape(b, -1, x.shape[-1])] if return_hidden else None

        for s in range(cfg.num_stages):
            for i in range(cfg.depths[s]):
                x = block_cls(
                    num_heads=cfg.num_heads[s], window=cfg.window_size, table_window=cfg.stage_window(s),
                    shift=(cfg.window_size // 2) if i % 2 else 0, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                    ln_eps=cfg.ln_eps, dtype=dtype, param_dtype=pdtype, attention_impl=self.attention_impl,
                    name=f"stage{s}_block{i}",
                )(x)
            if s < cfg.num_stages - 1:
                x = PatchMerging(cfg.ln_eps, dtype, pdtype, name=f"stage{s}_merge")(x)
            if return_hidden:
                hidden.append(x.reshape(b, -1, x.shape[-1]))

        x = constrain(x.reshape(b, -1, x.shape[-1]))
        x = layer_norm(cfg.ln_eps, dtype, pdtype, "norm")(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=1).astype(x.dtype)
        tokens = constrain(jnp.concatenate([pooled[:, None], x], axis=1))
        return dict(tokens=tokens, pooled=pooled, hidden=tuple(hidden) if return_hidden else None)
