"""The captioning loss of Tag2Text / RAM / BLIP's BertLMHeadModel, as a pure function of the
decoder's logits, and the targets it scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE = -100  # target id that is not scored (PyTorch's CrossEntropyLoss ignore_index)


def caption_lm_loss(logits, targets, label_smoothing: float = 0.1):
    """Next-token cross-entropy as BLIP's `BertLMHeadModel` computes it (Tag2Text / RAM's
    loss_t2t): position t predicts targets[t + 1]; targets equal to IGNORE (-100: padding
    and the prompt) are not scored; PyTorch's label smoothing (1-ε)·onehot + ε/V; mean
    over the scored tokens. Returns (loss, number of scored tokens)."""
    logits = logits[:, :-1].astype(jnp.float32)
    labels = targets[:, 1:]
    valid = labels != IGNORE
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    per_token = optax.softmax_cross_entropy(logits, onehot)
    n = valid.sum()
    return jnp.where(valid, per_token, 0.0).sum() / jnp.maximum(n, 1), n


def caption_targets(ids, pad_id: int, prompt_length: int):
    """Decoder targets from input ids, as Tag2Text / RAM build them: padding -> IGNORE and the
    first `prompt_length` positions (bos + "a picture of") -> IGNORE."""
    t = jnp.where(ids == pad_id, IGNORE, ids)
    return t.at[:, :prompt_length].set(IGNORE)
