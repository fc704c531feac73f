"""GradCache: gradient accumulation for contrastive losses that keeps every negative.

Plain micro-batch accumulation computes the loss per micro-batch, so each example only sees
the negatives of its own micro-batch - a different (easier) objective. GradCache (Gao et al.,
2021) splits the *backward* pass instead:

  (a) embed every micro-batch without gradient (a `lax.scan`; only the (N, d) embeddings are
      kept, never the towers' activations for the whole batch);
  (b) compute the loss on the full batch of embeddings and its gradient with respect to the
      embeddings (and to loss-only parameters such as `logit_scale` / `logit_bias`);
  (c) for each micro-batch, re-run the towers under `jax.vjp` and pull that micro-batch's
      slice of the embedding gradient back to the parameters, summing over micro-batches.

By the chain rule the result equals `jax.value_and_grad` of the full-batch loss; peak
activation memory is that of one micro-batch plus the (N, d) embeddings.

Micro-batches are *strided*: micro-batch k holds rows k, k + M, k + 2M, ... (M = num_micro).
With the batch sharded contiguously over the data axes (n rows per device, n divisible by M),
every micro-batch then takes n / M rows from every device, so each step of (a) and (c) stays
data-parallel with no resharding, and the reassembled (N, d) embeddings are sharded like the
batch (which is what the ring losses want).

RNG / dropout. The embed functions get a key; micro-batch k uses `fold_in(rng, k)` (then
`fold_in(., 0)` for the image tower and `fold_in(., 1)` for the text tower), identically in (a)
and (c), so the recomputed forward pass draws the same dropout masks as the cached one and the
gradient is exact for the sampled objective. The masks differ from those of one full-batch
forward pass (different keys per row block), so accumulated and un-accumulated runs agree
exactly only for deterministic towers - as with any accumulation scheme.

BatchNorm. Towers with mutable batch statistics (ModifiedResNet in training mode) are not
supported: each micro-batch would normalise with its own statistics (not the full batch's),
and the statistics would be updated twice per micro-batch (in (a) and (c)). `clip_grad_cache`
raises a ValueError for them; use the un-accumulated step, or evaluation-mode BatchNorm
(`train=False`, running averages as constants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from clipjax.losses.contrastive import BATCH_AXES, contrastive_loss
from clipjax.models.clip import CLIP
from clipjax.tokenizer import text_attention_mask

EmbedFn = Callable[[Any, Any, Any], Any]  # (params, micro_batch, rng_or_None) -> embeddings
LossFn = Callable[[Any, Any, Any], jax.Array]  # (params, image_embeds, text_embeds) -> scalar


def _batch_size(tree) -> int:
    sizes = {x.shape[0] for x in jax.tree_util.tree_leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"grad_cache: inputs must share one leading batch size, got {sorted(sizes)}")
    return sizes.pop()


def _split(tree, num_micro: int):
    """(N, ...) -> (num_micro, N / num_micro, ...), micro-batch k = rows k, k + M, ..."""
    def f(x):
        m = x.shape[0] // num_micro
        return jnp.swapaxes(x.reshape(m, num_micro, *x.shape[1:]), 0, 1)
    return jax.tree_util.tree_map(f, tree)


def _merge(tree):
    """Inverse of `_split`: (num_micro, m, ...) -> (N, ...) in the original row order."""
    def f(x):
        return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return jax.tree_util.tree_map(f, tree)


def _keys(rng, num_micro: int):
    if rng is None:
        return None
    return jax.vmap(lambda k: jax.random.fold_in(rng, k))(jnp.arange(num_micro))


def _tower_keys(key):
    if key is None:
        return None, None
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def grad_cache_value_and_grad(embed_image_fn: EmbedFn, embed_text_fn: EmbedFn, loss_fn: LossFn, params,
                              images, ids, num_micro: int, rng=None):
    """(loss, grads) of `loss_fn(params, embed_image_fn(params, images), embed_text_fn(params, ids))`
    on the full batch, computed one micro-batch of towers at a time.

    embed_image_fn(params, images_micro, rng) / embed_text_fn(params, ids_micro, rng): the
      towers; `rng` is a per-micro-batch, per-tower key (None when `rng` is None).
    loss_fn(params, image_embeds, text_embeds): the contrastive loss on the full (N, d)
      embeddings; it reads loss-only parameters (logit_scale, logit_bias) from `params`.
    images, ids: arrays or pytrees of arrays with a leading batch axis N, N % num_micro == 0.
    Returns the loss and gradients with the structure of `params`.
    """
    num_micro = int(num_micro)
    n = _batch_size((images, ids))
    if num_micro < 1 or n % num_micro:
        raise ValueError(f"grad_cache: the batch ({n}) must split into num_micro={num_micro} equal micro-batches")
    xs_img, xs_txt, keys = _split(images, num_micro), _split(ids, num_micro), _keys(rng, num_micro)
    frozen = jax.lax.stop_gradient(params)

    # (a) embeddings of every micro-batch, no gradient, no activations kept.
    def embed(_, xs):
        x, t, key = xs
        ki, kt = _tower_keys(key)
        return None, (embed_image_fn(frozen, x, ki), embed_text_fn(frozen, t, kt))

    _, (img, txt) = jax.lax.scan(embed, None, (xs_img, xs_txt, keys))

    # (b) the full-batch loss and its gradient w.r.t. the embeddings and the loss's own params.
    loss, (g_params, g_img, g_txt) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
        params, _merge(img), _merge(txt))
    g_img, g_txt = _split(g_img, num_micro), _split(g_txt, num_micro)

    # (c) backprop each micro-batch through the towers with its slice of the embedding gradient.
    def backprop(acc, xs):
        x, t, gi, gt, key = xs
        ki, kt = _tower_keys(key)
        _, vjp = jax.vjp(lambda p: (embed_image_fn(p, x, ki), embed_text_fn(p, t, kt)), params)
        (g,) = vjp((gi, gt))
        return jax.tree_util.tree_map(jnp.add, acc, g), None

    grads, _ = jax.lax.scan(backprop, g_params, (xs_img, xs_txt, g_img, g_txt, keys))
    return loss, grads


def clip_embed_fns(model, other_variables=None, train: bool = True):
    """Embed functions for `grad_cache_value_and_grad` from a `clipjax.models.clip.CLIP`.

    Both return L2-normalised embeddings. `other_variables` are non-param collections passed
    as constants. Text inputs are an `ids` array or a dict {"ids", "attention_mask"}.
    Raises ValueError for BatchNorm towers in training mode (see the module docstring).
    """
    other = dict(other_variables or {})
    if train and "batch_stats" in other:
        raise ValueError(
            "GradCache accumulation does not support towers with mutable BatchNorm statistics in "
            "training mode (e.g. ModifiedResNet): micro-batches would be normalised with their own "
            "statistics and the running averages updated once per micro-batch pass. Train this model "
            "without accumulation (grad_accum_steps=1) or with train=False (running averages).")

    def rngs(key):
        return {"dropout": key} if key is not None else {}

    def embed_image(params, images, key):
        return model.apply({"params": params, **other}, images, train=train, normalize=True,
                           method=CLIP.encode_image, rngs=rngs(key))

    def embed_text(params, ids, key):
        if isinstance(ids, dict):
            ids, mask = ids["ids"], ids.get("attention_mask")
        else:
            mask = text_attention_mask(model.cfg.text, ids)  # BERT towers: ids != [PAD]
        return model.apply({"params": params, **other}, ids, attention_mask=mask, train=train, normalize=True,
                           method=CLIP.encode_text, rngs=rngs(key))

    return embed_image, embed_text


def clip_loss_fn(kind: str, impl: str = "global", mesh=None, axes=BATCH_AXES) -> LossFn:
    """`loss_fn(params, image_embeds, text_embeds)` for `grad_cache_value_and_grad`."""
    def loss_fn(params, img, txt):
        return contrastive_loss(kind, impl, img, txt, params, mesh=mesh, axes=axes)
    return loss_fn


def clip_grad_cache(model, kind: str, num_micro: int, impl: str = "global", mesh=None, train: bool = True,
                    axes=BATCH_AXES):
    """A train-step helper: `fn(params, other_variables, images, ids, rng) -> (loss, grads)`.

    Drop-in for `jax.value_and_grad(loss)(params, ...)` in a CLIP train step, with the same
    value and gradients as the full batch (for deterministic towers) and one micro-batch's
    activation memory.
    """
    loss_fn = clip_loss_fn(kind, impl, mesh, axes)

    def fn(params, other_variables, images, ids, rng=None):
        embed_image, embed_text = clip_embed_fns(model, other_variables, train=train)
        return grad_cache_value_and_grad(embed_image, embed_text, loss_fn, params, images, ids, num_micro, rng=rng)

    return fn
