"""Contrastive losses as pure functions of the (normalised) embeddings.

The global versions materialise the full (N, N) logits; under jit over a mesh GSPMD shards
them. They are the reference every distributed variant is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100


def clamped_scale(logit_scale):
    """exp(logit_scale) clamped at 100, as CLIP does (gradient stops at the clamp)."""
    return jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), MAX_LOGIT_SCALE)


def softmax_clip_loss(image_embeds, text_embeds, logit_scale):
    """Symmetric cross-entropy over image->text and text->image similarities.

    `logit_scale` is the learnable log-temperature; embeddings are L2-normalised.
    """
    scale = clamped_scale(logit_scale)
    logits = scale * image_embeds.astype(jnp.float32) @ text_embeds.astype(jnp.float32).T
    labels = jnp.arange(logits.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return 0.5 * (i2t + t2i)


def sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias):
    """SigLIP's pairwise sigmoid loss: -log σ(z·(s·cos + b)), z = +1 on the diagonal, -1 off;
    summed over texts, averaged over images."""
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    logits = scale * image_embeds.astype(jnp.float32) @ text_embeds.astype(jnp.float32).T + logit_bias
    n = logits.shape[0]
    z = 2.0 * jnp.eye(n) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n
