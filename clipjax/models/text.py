"""CLIP's causal text transformer: token + position embeddings, causal pre-LN blocks,
ln_final, pooling at the end-of-text token, projection."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.config import TextConfig
from clipjax.models.layers import constrain, dtype_of, layer_norm, projection, token_position_embed, tower_transformer


def eos_positions(ids: jnp.ndarray, eos_token_id: Optional[int]) -> jnp.ndarray:
    """Index of the end-of-text token per row.

    With an `eos_token_id`, the first occurrence (transformers' rule); with None, argmax of the
    ids (OpenAI's rule, valid because end-of-text has the largest id in its vocabulary).
    A row without the token pools at its last position rather than silently at 0.
    """
    if eos_token_id is None:
        return jnp.argmax(ids, axis=-1)
    is_eos = ids == eos_token_id
    first = jnp.argmax(is_eos, axis=-1)
    return jnp.where(is_eos.any(axis=-1), first, ids.shape[-1] - 1)


class CausalTextTransformer(nn.Module):
    """Returns dict(tokens=ln_final output (B, T, W), pooled=token at eos (B, W),
    embeds=projection (B, E) or None, hidden=stacked layer outputs when return_hidden)."""

    cfg: TextConfig
    embed_dim: Optional[int] = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, ids, attention_mask=None, return_hidden: bool = False, deterministic: bool = True):
        # attention_mask is accepted for API symmetry with BERT towers and ignored: under the
        # causal mask, padding after the end-of-text token cannot reach the pooled position.
        cfg = self.cfg
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        t = ids.shape[-1]
        if t > cfg.context_length:
            raise ValueError(f"text length {t} exceeds the model's context length {cfg.context_length}")
        x = constrain(token_position_embed(self, cfg, ids, pos_std=0.01))
        x, hidden = tower_transformer(self, cfg, norm_first=True, is_causal=True, deterministic=deterministic,
                                      return_hidden=return_hidden)(x)
        x = layer_norm(cfg.ln_eps, dtype, pdtype, "ln_final")(x)
        idx = eos_positions(ids, cfg.eos_token_id)
        pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
        return dict(tokens=x, pooled=pooled, embeds=projection(self, pooled), hidden=hidden)
