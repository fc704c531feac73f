"""Shared transformer pieces: attention, MLP, pre-/post-LN blocks and a scanned stack.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the main
activations a logical constraint, so a mesh and a rule table decide placement; nothing here
knows about devices. Layer stacks are `nn.scan`ned (parameters stacked on a leading "layers"
axis) so compile time stays flat in depth, with a remat policy chosen by name.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any

BATCH_LENGTH_EMBED = ("batch", "length", "embed")

REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": quick_gelu,
    "gelu": exact_gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def remat_block(block_cls, policy: str, prevent_cse: bool = True):
    """`block_cls` wrapped in nn.remat with the named policy ("none": unchanged)."""
    if policy == "none":
        return block_cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat policy {policy!r}; choose from {sorted(REMAT_POLICIES)}")
    return nn.remat(block_cls, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse)


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dtype_of(name: str | Dtype) -> Dtype:
    return jnp.dtype(name) if isinstance(name, str) else name


def logical(init: Callable, names: tuple) -> Callable:
    return nn.with_logical_partitioning(init, names)


def constrain(x, names=BATCH_LENGTH_EMBED):
    return nn.with_logical_constraint(x, names)


# PyTorch's nn.Linear / nn.Conv default init is irrelevant for parity (weights are loaded);
# training from scratch uses these, close to CLIP's own init.
default_kernel_init = nn.initializers.normal(stddev=0.02)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: Optional[str] = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones, ("norm",)),
        bias_init=logical(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def dense(features: int, names: tuple, dtype, param_dtype, use_bias=True, name=None) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(default_kernel_init, names),
        bias_init=logical(nn.initializers.zeros, (names[-1],)),
        name=name,
    )


class HeadsIn(nn.Module):
    """x (..., embed) -> (..., heads, head_dim) with a (embed, heads, head_dim) kernel.

    Written out rather than nn.DenseGeneral: DenseGeneral initialises a flattened 2-D kernel
    and reshapes it, so a 3-name logical annotation cannot be applied under a mesh."""

    heads: int
    head_dim: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", logical(default_kernel_init, ("embed", "heads", "kv")),
                            (x.shape[-1], self.heads, self.head_dim), self.param_dtype)
        y = jnp.einsum("...d,dhk->...hk", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", logical(nn.initializers.zeros, ("heads", "kv")),
                              (self.heads, self.head_dim), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class HeadsOut(nn.Module):
    """(..., heads, head_dim) -> (..., features) with a (heads, head_dim, embed) kernel."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", logical(default_kernel_init, ("heads", "kv", "embed")),
                            (x.shape[-2], x.shape[-1], self.features), self.param_dtype)
        y = jnp.einsum("...hk,hkd->...d", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", logical(nn.initializers.zeros, ("embed",)), (self.features,),
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class Attention(nn.Module):
    """Multi-head attention through `jax.nn.dot_product_attention`.

    Parameters: query/key/value kernels (embed, heads, head_dim), out kernel
    (heads, head_dim, embed). `kv` defaults to `x` (self-attention). `mask` is boolean,
    broadcastable to (batch, heads, q_len, kv_len), True = attend.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    implementation: Optional[str] = None
    kv_features: Optional[int] = None  # width of `kv` if it differs from x (cross-attention)

    @nn.compact
    def __call__(self, x, kv=None, mask=None, is_causal: bool = False):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads
        kv = x if kv is None else kv

        def proj(name, inp):
            return HeadsIn(self.num_heads, head_dim, self.use_bias, self.dtype, self.param_dtype, name=name)(inp)

        q = proj("query", x)
        k = proj("key", kv)
        v = proj("value", kv)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, implementation=self.implementation
        )
        out = HeadsOut(width, self.use_bias, self.dtype, self.param_dtype, name="out")(out)
        return out


class Mlp(nn.Module):
    hidden: int
    act: str = "quick_gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = dense(self.hidden, ("embed", "mlp"), self.dtype, self.param_dtype, name="fc1")(x)
        h = activation(self.act)(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return dense(width, ("mlp", "embed"), self.dtype, self.param_dtype, name="fc2")(h)


class Block(nn.Module):
    """One transformer layer.

    norm_first=True: CLIP / ViT pre-LN (x + attn(ln1 x); x + mlp(ln2 x)).
    norm_first=False: BERT post-LN (ln1(x + attn x); [ln_cross(x + xattn)]; ln2(x + mlp x)).
    self_attention=False drops the attn/ln1 sub-layer (Query2Label's tagging layers in
    Tag2Text / RAM: the queries only cross-attend the image).
    Returns (x, x) so `nn.scan` can also stack every layer's output (hidden states).
    """

    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    ln_eps: float = 1e-5
    norm_first: bool = True
    is_causal: bool = False
    cross_attention: bool = False
    self_attention: bool = True
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, mask=None, encoder=None, encoder_mask=None):
        def attn(name):
            return Attention(self.heads, self.dtype, self.param_dtype,
                             implementation=self.attention_impl, name=name)

        def ln(name):
            return layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)

        drop = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
        mlp = Mlp(self.mlp_dim, self.act, self.dtype, self.param_dtype, name="mlp")
        x = constrain(x)
        if self.norm_first:
            if self.self_attention:
                x = x + drop(attn("attn")(ln("ln1")(x), mask=mask, is_causal=self.is_causal))
            if self.cross_attention:
                x = x + drop(attn("cross_attn")(ln("ln_cross")(x), encoder, mask=encoder_mask))
            x = x + drop(mlp(ln("ln2")(x)))
        else:
            if self.self_attention:
                x = ln("ln1")(x + drop(attn("attn")(x, mask=mask, is_causal=self.is_causal)))
            if self.cross_attention:
                x = ln("ln_cross")(x + drop(attn("cross_attn")(x, encoder, mask=encoder_mask)))
            x = ln("ln2")(x + drop(mlp(x)))
        x = constrain(x)
        return x, x


class Transformer(nn.Module):
    """`depth` Blocks under `nn.scan` (params stacked on a leading "layers" axis).

    Returns (x, hidden) where hidden is the stack of every layer's output (depth, B, T, D)
    when `return_hidden` is set, else None.
    """

    depth: int
    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    ln_eps: float = 1e-5
    norm_first: bool = True
    is_causal: bool = False
    cross_attention: bool = False
    self_attention: bool = True
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    attention_impl: Optional[str] = None
    return_hidden: bool = False

    @nn.compact
    def __call__(self, x, mask=None, encoder=None, encoder_mask=None):
        block_cls = remat_block(Block, self.remat_policy, prevent_cse=False)  # scan already prevents CSE
        return_hidden = self.return_hidden

        def body(module, carry, mask, encoder, encoder_mask):
            y, h = module(carry, mask, encoder, encoder_mask)
            return y, (h if return_hidden else None)

        scanned = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        block = block_cls(
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            act=self.act,
            ln_eps=self.ln_eps,
            norm_first=self.norm_first,
            is_causal=self.is_causal,
            cross_attention=self.cross_attention,
            self_attention=self.self_attention,
            dropout_rate=self.dropout_rate,
            deterministic=self.deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            name="layers",
        )
        x, hidden = scanned(block, x, mask, encoder, encoder_mask)
        return x, hidden


# ---------------------------------------------------------------------------- tower pieces
# What the ViT, causal-text and BERT towers share, written once. They are called from inside a
# tower's compact __call__, so the submodules and parameters they create belong to that tower
# (same names as before: "token_embed", "pos_embed", "transformer", "proj").


def tower_transformer(tower, cfg, *, norm_first: bool, deterministic: bool, return_hidden: bool,
                      is_causal: bool = False, cross_attention: bool = False, dropout_rate: float = 0.0):
    """The scanned block stack of a tower: depth / heads / MLP / activation / LayerNorm eps from
    the tower's config `cfg` (VisionConfig or TextConfig), dtypes, remat and attention from the
    tower module itself."""
    return Transformer(
        depth=cfg.layers, heads=cfg.heads, mlp_dim=cfg.mlp_dim, act=cfg.act, ln_eps=cfg.ln_eps,
        norm_first=norm_first, is_causal=is_causal, cross_attention=cross_attention, dropout_rate=dropout_rate,
        deterministic=deterministic, dtype=dtype_of(tower.dtype), param_dtype=dtype_of(tower.param_dtype),
        remat_policy=tower.remat_policy, attention_impl=tower.attention_impl, return_hidden=return_hidden,
        name="transformer")


def token_position_embed(tower, cfg, ids, pos_std: float):
    """Token embeddings ("token_embed", normal(0.02)) plus learned positions ("pos_embed",
    normal(pos_std): 0.01 in CLIP's text tower, 0.02 in BERT) of a text tower."""
    dtype, pdtype = dtype_of(tower.dtype), dtype_of(tower.param_dtype)
    tok = nn.Embed(cfg.vocab_size, cfg.width, dtype=dtype, param_dtype=pdtype,
                   embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")), name="token_embed")
    pos = tower.param("pos_embed", logical(nn.initializers.normal(pos_std), ("length", "embed")),
                      (cfg.context_length, cfg.width), pdtype)
    # FSDP: gather the table's embed axis before the lookup (its vocab axis may stay sharded).
    # A lookup into a table sharded on embed over fsdp, feeding activations sharded on batch
    # over the same axis, is an "involuntary full rematerialization" for the SPMD partitioner.
    table = nn.with_logical_constraint(jnp.asarray(tok.embedding, dtype), ("vocab", None))
    return jnp.take(table, ids, axis=0) + pos[:ids.shape[-1]].astype(dtype)


def projection(tower, pooled):
    """The tower's bias-free projection to the shared embedding ("proj"), or None without
    `embed_dim`."""
    if tower.embed_dim is None:
        return None
    return dense(tower.embed_dim, ("embed", "proj"), dtype_of(tower.dtype), dtype_of(tower.param_dtype),
                 use_bias=False, name="proj")(pooled)
