"""OpenAI CLIP's ModifiedResNet image tower (RN50, RN101, RN50x4, ...).

Exactly the architecture of OpenAI's `clip/model.py`:

* stem: three 3x3 convs (the first with stride 2; widths width/2, width/2, width), each
  followed by BatchNorm + ReLU, then a 2x2 average pool;
* four stages of Bottleneck blocks (1x1 -> 3x3 -> [avgpool(stride)] -> 1x1 expanding x4) with
  strides 1, 2, 2, 2 — anti-aliased: the stride is an average pool, every conv has stride 1;
  the shortcut is avgpool(stride) + 1x1 conv + BN when the stride or the width changes;
* AttentionPool2d: the spatial mean is prepended as a token, a learned (HW+1, C) position
  embedding is added, and one multi-head attention step in which only the mean token queries
  all tokens, followed by c_proj to `embed_dim`.

Parameter names follow OpenAI's module names (conv1/bn1/..., layer{N}_{M}/..., attnpool/...)
so the converter table reads one to one. Images are NHWC.

BatchNorm: eps 1e-5, PyTorch's momentum 0.1 (flax momentum 0.9), `use_running_average =
not train`; running statistics live in the "batch_stats" collection (call with
`mutable=["batch_stats"]` when train=True). Note that flax updates the running variance with
the biased batch variance where PyTorch uses the unbiased one; this only affects training-mode
statistics updates, never inference.

Other input sizes: OpenAI's code cannot run them (its position embedding has a fixed length).
Here the (grid x grid) part of the attention-pool position embedding is resized with the
PyTorch-exact bicubic kernel (`clipjax.models.vit.resize_pos_grid`), as the ViT tower does
(the mean-token position is kept); at `cfg.image_size` nothing is resized, so results match
OpenAI exactly.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.config import VisionConfig
from clipjax.models.layers import HeadsIn, HeadsOut, dtype_of, logical
from clipjax.models.vit import resize_pos_grid

CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")
BN_MOMENTUM = 0.9  # flax convention: PyTorch's momentum=0.1
BN_EPS = 1e-5
EXPANSION = 4


def _conv(features: int, kernel: int, dtype, pdtype, name: str, stride: int = 1) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=pdtype,
        kernel_init=logical(nn.initializers.variance_scaling(2.0, "fan_out", "normal"), CONV_AXES),
        name=name,
    )


def _bn(train: bool, dtype, pdtype, name: str, zero_init: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        dtype=dtype,
        param_dtype=pdtype,
        scale_init=logical(nn.initializers.zeros if zero_init else nn.initializers.ones, ("conv_out",)),
        bias_init=logical(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def _avg_pool(x, k: int):
    # PyTorch AvgPool2d(k): kernel = stride = k, no padding, floor
    return nn.avg_pool(x, (k, k), strides=(k, k), padding="VALID")


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        out_ch = self.planes * EXPANSION
        out = nn.relu(_bn(train, dtype, pdtype, "bn1")(_conv(self.planes, 1, dtype, pdtype, "conv1")(x)))
        out = nn.relu(_bn(train, dtype, pdtype, "bn2")(_conv(self.planes, 3, dtype, pdtype, "conv2")(out)))
        if self.stride > 1:
            out = _avg_pool(out, self.stride)
        # zero-init of the last BN scale, as OpenAI's initialize_parameters (training from scratch)
        out = _bn(train, dtype, pdtype, "bn3", zero_init=True)(_conv(out_ch, 1, dtype, pdtype, "conv3")(out))
        identity = x
        if self.stride > 1 or x.shape[-1] != out_ch:
            if self.stride > 1:
                identity = _avg_pool(identity, self.stride)
            identity = _conv(out_ch, 1, dtype, pdtype, "downsample_conv")(identity)
            identity = _bn(train, dtype, pdtype, "downsample_bn")(identity)
        return nn.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Mean token + learned positions, one attention step queried by the mean token only.

    q/k/v kernels are (C, heads, head_dim) and c_proj's (heads, head_dim, out) — the layout of
    `clipjax.models.layers.Attention` (which cannot be reused as is: its output projection
    maps back to the input width, c_proj maps to `embed_dim`)."""

    grid: int  # positions learned for a grid x grid feature map
    num_heads: int
    out_dim: Optional[int] = None
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"attention pool width {c} is not divisible by {self.num_heads} heads")
        head_dim = c // self.num_heads
        out_dim = self.out_dim or c
        x = x.reshape(b, h * w, c)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # (B, HW+1, C)
        pos = self.param("pos_embed", logical(nn.initializers.normal(c**-0.5), ("length", "embed")),
                         (self.grid * self.grid + 1, c), pdtype)
        if (h, w) != (self.grid, self.grid):
            grid_pos = resize_pos_grid(pos[1:].reshape(self.grid, self.grid, c), h, w).reshape(h * w, c)
            pos = jnp.concatenate([pos[:1], grid_pos.astype(pos.dtype)], axis=0)
        x = x + pos.astype(x.dtype)

        def proj(name, inp):
            return HeadsIn(self.num_heads, head_dim, True, dtype, pdtype, name=name)(inp)

        q = proj("q_proj", x[:, :1])  # only the mean token queries
        k = proj("k_proj", x)
        v = proj("v_proj", x)
        out = jax.nn.dot_product_attention(q, k, v)  # (B, 1, heads, head_dim)
        out = HeadsOut(out_dim, True, dtype, pdtype, name="c_proj")(out)
        return out[:, 0]


class ModifiedResNet(nn.Module):
    """Returns dict(embeds=(B, embed_dim) attention-pooled projection, pooled=the same,
    tokens=final feature map flattened (B, h*w, C) with C = 32 * width, hidden=None)."""

    cfg: VisionConfig
    embed_dim: Optional[int] = None  # None: c_proj keeps the feature width (32 * width)
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, images, train: bool = False):
        cfg = self.cfg
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        width = cfg.resnet_width
        if len(cfg.resnet_layers) != 4:
            raise ValueError(f"ModifiedResNet needs 4 stage depths, got {cfg.resnet_layers}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, got shape {images.shape}")
        x = images.astype(dtype)
        # stem
        x = nn.relu(_bn(train, dtype, pdtype, "bn1")(_conv(width // 2, 3, dtype, pdtype, "conv1", stride=2)(x)))
        x = nn.relu(_bn(train, dtype, pdtype, "bn2")(_conv(width // 2, 3, dtype, pdtype, "conv2")(x)))
        x = nn.relu(_bn(train, dtype, pdtype, "bn3")(_conv(width, 3, dtype, pdtype, "conv3")(x)))
        x = _avg_pool(x, 2)
        # residual stages
        for s, (depth, stride) in enumerate(zip(cfg.resnet_layers, (1, 2, 2, 2))):
            planes = width * 2**s
            for m in range(depth):
                x = Bottleneck(planes, stride if m == 0 else 1, self.dtype, self.param_dtype,
                               name=f"layer{s + 1}_{m}")(x, train=train)
        b, h, w, c = x.shape
        if h == 0 or w == 0:
            raise ValueError(f"image of shape {images.shape[1:3]} is too small for ModifiedResNet (needs >= 32 px)")
        tokens = nn.with_logical_constraint(x.reshape(b, h * w, c), ("batch", "length", "embed"))
        embeds = AttentionPool2d(cfg.image_size // 32, cfg.heads, self.embed_dim, self.dtype, self.param_dtype,
                                 name="attnpool")(x)
        return dict(embeds=embeds, pooled=embeds, tokens=tokens, hidden=None)
