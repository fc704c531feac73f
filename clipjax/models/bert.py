"""BERT-family bidirectional text encoders (transformers' `BertModel` / `DistilBertModel`
layouts) as a clipjax text tower.

kind "bert": word + learned position + token-type embeddings, LayerNorm, post-LN blocks
(optionally with cross-attention to `encoder_hidden_states`, as Tag2Text / RAM / BLIP use),
pooler = dense + tanh on the [CLS] token. kind "distilbert": no token types, same post-LN
structure, no pooler. Pooling per `cfg.pool`: "pooler" (BertModel's pooler_output), "cls"
(the [CLS] token) or "mean" (attention-mask-weighted mean of the last hidden state).

Attention-probability dropout is not modelled (hidden dropout is: after the embeddings and
inside every residual branch, only when `deterministic` is False).
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.config import TextConfig
from clipjax.models.layers import (
    constrain, dense, dtype_of, layer_norm, logical, projection, token_position_embed, tower_transformer)

POOLS = ("cls", "mean", "pooler")


def padding_mask(attention_mask) -> Optional[jnp.ndarray]:
    """(B, T) 1/0 (or bool) key mask -> boolean (B, 1, 1, T), True = attend; None stays None."""
    if attention_mask is None:
        return None
    return (jnp.asarray(attention_mask) != 0)[:, None, None, :]


class BertEncoder(nn.Module):
    """Returns dict(tokens=last hidden state (B, T, W), pooled=(B, W) per cfg.pool,
    embeds=bias-free projection of pooled (B, E) or None, hidden=every layer's output
    stacked (L, B, T, W) when return_hidden, else None).

    With cfg.cross_attention every layer also attends to `encoder_hidden_states` (B, S, E_w),
    whose width may differ from the text width (the key/value kernels take E_w inputs).
    Without `encoder_hidden_states` the cross-attention sub-layers are skipped, as
    transformers and BLIP's text-only mode do. `encoder_width` (default: the text width)
    only sizes the cross-attention key/value kernels when the module is initialised
    without encoder states. `causal` makes the self-attention causal (a decoder, see
    clipjax.models.captioning).
    """

    cfg: TextConfig
    embed_dim: Optional[int] = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None
    dropout_rate: float = 0.1
    encoder_width: Optional[int] = None
    # BertLMHeadModel / BLIP's decoder: causal self-attention (combined with the padding mask)
    causal: bool = False

    @nn.compact
    def __call__(
        self,
        ids,
        attention_mask=None,
        token_type_ids=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        return_hidden: bool = False,
        deterministic: bool = True,
    ):
        cfg = self.cfg
        if cfg.kind not in ("bert", "distilbert"):
            raise ValueError(f"BertEncoder needs a 'bert' or 'distilbert' TextConfig, got kind={cfg.kind!r}")
        if cfg.pool not in POOLS:
            raise ValueError(f"BertEncoder pools by one of {POOLS}, got pool={cfg.pool!r}")
        if cfg.kind == "distilbert" and cfg.pool == "pooler":
            raise ValueError("DistilBERT has no pooler; use pool='cls' or 'mean'")
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        b, t = ids.shape
        if t > cfg.context_length:
            raise ValueError(f"text length {t} exceeds the model's {cfg.context_length} positions")

        x = token_position_embed(self, cfg, ids, pos_std=0.02)
        if cfg.kind == "bert":
            types = nn.Embed(
                cfg.type_vocab_size,
                cfg.width,
                dtype=dtype,
                param_dtype=pdtype,
                embedding_init=logical(nn.initializers.normal(0.02), ("type_vocab", "embed")),
                name="type_embed",
            )
            if token_type_ids is None:
                token_type_ids = jnp.zeros((b, t), jnp.int32)
            x = x + types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("DistilBERT has no token type embeddings; token_type_ids must be None")
        x = layer_norm(cfg.ln_eps, dtype, pdtype, "ln_embed")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
        x = constrain(x)

        mask = padding_mask(attention_mask)
        use_cross = cfg.cross_attention and encoder_hidden_states is not None
        if cfg.cross_attention and encoder_hidden_states is None and self.is_initializing():
            # create the cross-attention parameters with the right key/value input width
            encoder_hidden_states = jnp.zeros((b, 1, self.encoder_width or cfg.width), dtype)
            use_cross = True
        enc, enc_mask = None, None
        if use_cross:
            enc = constrain(encoder_hidden_states.astype(dtype))
            enc_mask = padding_mask(encoder_attention_mask)

        x, hidden = tower_transformer(self, cfg, norm_first=False, is_causal=self.causal, cross_attention=use_cross,
                                      dropout_rate=self.dropout_rate, deterministic=deterministic,
                                      return_hidden=return_hidden)(x, mask, enc, enc_mask)

        if cfg.pool == "mean":
            m = jnp.ones((b, t), dtype) if attention_mask is None else (jnp.asarray(attention_mask) != 0).astype(dtype)
            total = jnp.einsum("btd,bt->bd", x, m)
            pooled = total / jnp.maximum(m.sum(axis=1, keepdims=True), 1e-9)
        else:
            pooled = x[:, 0]
            if cfg.pool == "pooler":
                pooled = jnp.tanh(dense(cfg.width, ("embed", "embed_out"), dtype, pdtype, name="pooler")(pooled))
        pooled = nn.with_logical_constraint(pooled, ("batch", "embed"))
        return dict(tokens=x, pooled=pooled, embeds=projection(self, pooled), hidden=hidden)
