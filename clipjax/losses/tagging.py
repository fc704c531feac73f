"""Losses of Tag2Text / RAM / RAM++ and BLIP's image-text contrastive and matching losses,
as pure functions of logits / embeddings (and a PRNG key where the original samples).

Sources: recognize-anything `ram/models/utils.py` (AsymmetricLoss), `ram/models/ram.py`,
`ram_plus.py`, `pretrain.py` / `finetune.py` (how the losses are combined); salesforce BLIP
`models/blip_pretrain.py`, `blip_retrieval.py` (ITC / ITM, which Tag2Text's paper uses for
retrieval; the released Tag2Text code trains only the tagging and captioning losses).

Combined objectives of the released code (all weights are 1):
    Tag2Text: loss_t2t + balanced(loss_tag, loss_t2t)
    RAM:      loss_t2t + balanced(loss_tag, loss_t2t) + loss_dis
    RAM++:    loss_tag + loss_dis + loss_alignment
    BLIP:     loss_itc + loss_itm + loss_lm
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from clipjax.models.alignment import itc_similarities, pair_mask

# ---------------------------------------------------------------------------- tagging


def asymmetric_loss(logits, targets, gamma_neg: float = 7.0, gamma_pos: float = 0.0, clip: float = 0.05,
                    eps: float = 1e-8, focal_gradient: bool = False):
    """Asymmetric loss (Ridnik et al. 2021) as Tag2Text / RAM compute it: a *sum* over every
    (image, tag), not a mean.

        p = sigmoid(x);  p_neg = min(1 - p + clip, 1)          (probability shifting)
        L = y log(max(p, eps)) + (1 - y) log(max(p_neg, eps))
        w = (1 - p_t) ** (gamma_pos y + gamma_neg (1 - y)),    p_t = p y + p_neg (1 - y)
        loss = -sum(w * L)

    The original computes `w` with autograd disabled (`disable_torch_grad_focal_loss=True`),
    so `w` is a constant weight: stop_gradient here unless `focal_gradient`. Defaults are the
    tagging loss of Tag2Text / RAM / RAM++ (gamma_neg 7, gamma_pos 0, clip 0.05); RAM++'s
    image-text alignment loss uses gamma_neg 4.
    """
    x = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(targets, jnp.float32)
    p = jax.nn.sigmoid(x)
    p_neg = 1.0 - p
    if clip is not None and clip > 0:
        p_neg = jnp.minimum(p_neg + clip, 1.0)
    loss = y * jnp.log(jnp.maximum(p, eps)) + (1.0 - y) * jnp.log(jnp.maximum(p_neg, eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = p * y + p_neg * (1.0 - y)
        w = jnp.power(1.0 - pt, gamma_pos * y + gamma_neg * (1.0 - y))
        loss = loss * (w if focal_gradient else jax.lax.stop_gradient(w))
    return -jnp.sum(loss)


def balanced(loss, reference):
    """`loss / stop_gradient(loss / reference)`: the value of `reference`, the gradient of
    `loss` scaled by reference / loss. Tag2Text and RAM add the tagging loss this way
    (pretrain.py: `loss_tag / (loss_tag / loss_t2t).detach()`), so the summed ASL (thousands
    of tags) weighs as much as the captioning cross-entropy."""
    return loss / jax.lax.stop_gradient(loss / reference)


def tag2text_loss(loss_t2t, loss_tag):
    return loss_t2t + balanced(loss_tag, loss_t2t)


def ram_loss(loss_t2t, loss_tag, loss_dis):
    return loss_t2t + balanced(loss_tag, loss_t2t) + loss_dis


def clip_distillation_loss(image_cls, clip_image_embeds):
    """RAM's loss_dis: F.l1_loss (mean over batch and features) between the image_proj'd
    [CLS] token (Swin's average-pooled token, 512 wide) and CLIP ViT-B/16 `encode_image`
    output, neither normalised. CLIP is frozen (no gradient to it)."""
    a = jnp.asarray(image_cls, jnp.float32)
    b = jax.lax.stop_gradient(jnp.asarray(clip_image_embeds, jnp.float32))
    return jnp.mean(jnp.abs(a - b))


def alignment_targets(batch: int):
    """RAM++'s image-text alignment: captions' CLIP embeddings go through the tagging head as
    queries; the (B images, B captions) logits have identity targets (ASL, gamma_neg=4)."""
    return jnp.eye(batch, dtype=jnp.float32)


# ---------------------------------------------------------------------------- ITC / ITM (BLIP)

def itc_loss(image_feat, text_feat, temp, image_ids=None, sim_i2t_m=None, sim_t2i_m=None, alpha: float = 0.0):
    """BLIP's image-text contrastive loss on L2-normalised features (B, E).

    Targets: the matching pair (or, with `image_ids`, every pair of the same image, uniformly,
    as blip_retrieval.py), mixed with the momentum model's softmax when `alpha` > 0 and the
    momentum similarities `sim_*_m` are given (`alpha * softmax(sim_m) + (1 - alpha) * hard`;
    BLIP pretrain: alpha 0.4, ramped up over the first 2 epochs). Loss = (i2t + t2i) / 2 of the
    soft cross-entropies. Returns (loss, (sim_i2t, sim_t2i)) for hard-negative mining."""
    sim_i2t, sim_t2i = itc_similarities(image_feat, text_feat, temp)
    loss = itc_loss_from_similarities(sim_i2t, sim_t2i, image_ids, sim_i2t_m, sim_t2i_m, alpha)
    return loss, (sim_i2t, sim_t2i)


def itc_loss_from_similarities(sim_i2t, sim_t2i, image_ids=None, sim_i2t_m=None, sim_t2i_m=None,
                               alpha: float = 0.0):
    """`itc_loss` on similarities already divided by the temperature (what Tag2Text.align
    returns)."""
    pos = pair_mask(sim_i2t.shape[0], sim_i2t.shape[1], image_ids, image_ids).astype(jnp.float32)
    hard = pos / pos.sum(axis=1, keepdims=True)

    def targets(sim_m):
        if alpha == 0.0 or sim_m is None:
            return hard
        return alpha * jax.nn.softmax(jax.lax.stop_gradient(sim_m), axis=1) + (1.0 - alpha) * hard

    i2t = optax.softmax_cross_entropy(sim_i2t, targets(sim_i2t_m)).mean()
    t2i = optax.softmax_cross_entropy(sim_t2i, targets(sim_t2i_m)).mean()
    return 0.5 * (i2t + t2i)


def itm_loss(itm_logits, labels):
    """Mean cross-entropy of the 2-way ITM head (logits (N, 2), labels 1 = match)."""
    return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(itm_logits, jnp.float32), labels).mean()


def itm_accuracy(itm_logits, labels):
    return jnp.mean((jnp.argmax(itm_logits, axis=-1) == labels).astype(jnp.float32))


def tagging_metrics(logits, targets, thresholds: Optional[jnp.ndarray] = None, threshold: float = 0.5):
    """Micro precision / recall / F1 of thresholded sigmoid predictions (for logging)."""
    t = threshold if thresholds is None else thresholds
    pred = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)) > t
    y = jnp.asarray(targets) > 0.5
    tp = jnp.sum(pred & y)
    precision = tp / jnp.maximum(jnp.sum(pred), 1)
    recall = tp / jnp.maximum(jnp.sum(y), 1)
    f1 = 2 * precision * recall / jnp.maximum(precision + recall, 1e-12)
    return dict(precision=precision, recall=recall, f1=f1)
