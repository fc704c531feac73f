"""A BERT caption decoder: transformers' `BertLMHeadModel` (and BLIP's / Tag2Text's / RAM's
`text_decoder`) as a Flax module (its loss: clipjax.losses.captioning).

Structure: a BertEncoder with causal self-attention and (optionally) cross-attention to
encoder states, then BERT's prediction head: dense -> activation -> LayerNorm -> logits
against the *word-embedding table* (the decoder weight is tied to the input embeddings, as
`tie_word_embeddings=True` does in transformers) plus a per-token bias.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.bert import BertEncoder
from clipjax.models.config import TextConfig
from clipjax.models.layers import activation, dense, dtype_of, layer_norm, logical

class CaptionDecoder(nn.Module):
    """ids (B, T) -> dict(logits=(B, T, vocab) float32, hidden=(B, T, width)).

    `encoder_hidden_states` (B, S, E) are attended by every layer when cfg.cross_attention;
    `encoder_width` sizes the cross-attention key/value kernels at initialisation when the
    states are not given. The [CLS]-style pooler of BertModel does not exist here
    (BertLMHeadModel builds its BertModel with add_pooling_layer=False).
    """

    cfg: TextConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None
    dropout_rate: float = 0.1
    encoder_width: Optional[int] = None

    @nn.compact
    def __call__(self, ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 deterministic: bool = True):
        cfg = self.cfg
        if cfg.kind != "bert":
            raise ValueError(f"CaptionDecoder needs a 'bert' TextConfig, got kind={cfg.kind!r}")
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        if cfg.pool == "pooler":  # BertLMHeadModel has no pooler
            cfg = dataclasses.replace(cfg, pool="cls")
        bert = BertEncoder(cfg, dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
                           attention_impl=self.attention_impl, dropout_rate=self.dropout_rate,
                           encoder_width=self.encoder_width, causal=True, name="bert")
        out = bert(ids, attention_mask, encoder_hidden_states=encoder_hidden_states,
                   encoder_attention_mask=encoder_attention_mask, deterministic=deterministic)
        h = out["tokens"]
        # BertPredictionHeadTransform
        x = dense(cfg.width, ("embed", "embed_out"), dtype, pdtype, name="transform")(h)
        x = activation(cfg.act)(x)
        x = layer_norm(cfg.ln_eps, dtype, pdtype, "transform_ln")(x)
        table = bert.variables["params"]["token_embed"]["embedding"]
        table = table.value if hasattr(table, "value") else table  # unbox a Partitioned leaf
        bias = self.param("lm_bias", logical(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,), pdtype)
        logits = jnp.einsum("btd,vd->btv", x, jnp.asarray(table, dtype)) + bias.astype(dtype)
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        return dict(logits=logits, hidden=h)
