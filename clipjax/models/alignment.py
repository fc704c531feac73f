"""BLIP's image-text alignment pieces that belong to the forward pass (Tag2Text.align):
the temperature's range, similarities, and the choice of hard negatives for the ITM batch.
Their losses are in clipjax.losses.tagging (models return scores; tasks compute losses).

Source: salesforce BLIP `models/blip_pretrain.py`, `blip_retrieval.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TEMP_INIT = 0.07
TEMP_RANGE = (0.001, 0.5)  # BLIP clamps its `temp` parameter in place before every step


def clamp_temperature(temp):
    """Project BLIP's temperature parameter into [0.001, 0.5]; apply to the parameter after
    each update (BLIP's `self.temp.clamp_(0.001, 0.5)`), not inside the loss."""
    return jnp.clip(temp, *TEMP_RANGE)


def pair_mask(n_rows: int, n_cols: int, ids_rows=None, ids_cols=None):
    """(rows, cols) bool: the matching pairs (the diagonal, or equal ids)."""
    if ids_rows is None:
        if n_rows != n_cols:
            raise ValueError("without ids the similarity matrix must be square (pairs on the diagonal)")
        return jnp.eye(n_rows, dtype=bool)
    return jnp.asarray(ids_rows)[:, None] == jnp.asarray(ids_cols)[None, :]




def itc_similarities(image_feat, text_feat, temp):
    """(sim_i2t, sim_t2i): cosine similarities of L2-normalised features / temperature."""
    img = jnp.asarray(image_feat, jnp.float32)
    txt = jnp.asarray(text_feat, jnp.float32)
    return img @ txt.T / temp, txt @ img.T / temp


def hard_negative_weights(sim, ids_rows=None, ids_cols=None, smoothing: float = 1e-4):
    """Sampling weights for ITM negatives: softmax over each row of similarities, plus
    `smoothing` (BLIP pretrain adds 1e-4; blip_retrieval adds 0), zero at the positives (the
    diagonal, or every column with the row's id). Gradient-free, as BLIP's torch.no_grad."""
    sim = jax.lax.stop_gradient(jnp.asarray(sim, jnp.float32))
    w = jax.nn.softmax(sim, axis=1) + smoothing
    return jnp.where(pair_mask(sim.shape[0], sim.shape[1], ids_rows, ids_cols), 0.0, w)


def sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids=None, smoothing: float = 1e-4):
    """One negative per row drawn with probability proportional to `hard_negative_weights`
    (BLIP's torch.multinomial): returns (neg_text_for_image (B,), neg_image_for_text (B,)).
    Every row needs at least one candidate that is not a positive (B >= 2; with ids, at least
    two distinct ids); a row without one has no valid draw."""
    k1, k2 = jax.random.split(key)

    def draw(k, sim):
        w = hard_negative_weights(sim, image_ids, image_ids, smoothing)
        return jax.random.categorical(k, jnp.log(w), axis=1)

    return draw(k1, sim_i2t), draw(k2, sim_t2i)


def itm_pairs(neg_text_for_image, neg_image_for_text):
    """Index pairs of BLIP's ITM batch: B positives (i, i), then B (neg image, text b) pairs
    and B (image b, neg text) pairs, in BLIP's order (image_embeds_all = [neg images, images],
    text_all = [texts, neg texts]). Returns (image_index (3B,), text_index (3B,), labels (3B,))
    with label 1 = match."""
    b = neg_text_for_image.shape[0]
    ar = jnp.arange(b)
    image_index = jnp.concatenate([ar, neg_image_for_text, ar])
    text_index = jnp.concatenate([ar, ar, neg_text_for_image])
    labels = jnp.concatenate([jnp.ones((b,), jnp.int32), jnp.zeros((2 * b,), jnp.int32)])
    return image_index, text_index, labels
