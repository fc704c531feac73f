"""Contrastive losses as pure functions of the (normalised) embeddings.

The global versions materialise the full (N, N) logits; under jit over a mesh GSPMD shards
them. They are the reference every distributed variant is tested against. The ring versions
(`ring_softmax_clip_loss`, `ring_sigmoid_loss`) compute the same values block by block under
`jax.shard_map`; `contrastive_loss` dispatches between them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

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


# --------------------------------------------------------------------------------------------
# Ring versions: never materialise the (N, N) logits.
#
# Layout. The global batch of N = D * n rows is sharded over the `axes` of the mesh (the data
# axes, jointly: D devices, n rows each). Inside `jax.shard_map` device d holds its image block
# I_d and its text block T_d. The text blocks travel around the ring with `lax.ppermute`
# (device i sends to i + 1), so at ring step k device d holds T_{d-k} and computes one n x n
# block of logits s * I_d T_{d-k}^T. After D - 1 shifts every device has seen every text block.
#
# Softmax needs a log-sum-exp over every row (image -> text) and every column (text -> image):
#   * rows: device d keeps a running (online) LSE of its n image rows; it never moves;
#   * columns: the partial LSE of text block j's n columns *travels with T_j* around the ring,
#     and each device folds in the LSE over its own image rows. After the D - 1 shifts the
#     accumulator of T_j has met all D image blocks, so it is complete - on device j + D - 1,
#     not on j's owner. The loss only needs the *sum* of the column LSEs, so it is summed where
#     it ends up and never routed back (no extra permute). This costs n floats of extra
#     communication per step; rotating the image blocks as well would cost n * d.
#   * the positive logits s * <I_i, T_i> are the diagonal of block k = 0 (computed locally).
#
# Memory. Each block's computation is wrapped in `jax.checkpoint`, and the ppermute sits
# outside it (so the backward pass does not redo forward communication). The scan's backward
# therefore keeps only each step's inputs - the text block (n x d) and the n-float
# accumulators - i.e. O(N * d + n^2) per device instead of the O(n * N) rows of logits (and
# their cotangents) of the global version. The transposed ppermute (the reverse ring) carries
# the text cotangents back to their owners automatically.
#
# Limits. Each device must hold the same number of rows (ppermute exchanges equal blocks), so
# N must be divisible by D; padding with masked rows is not implemented. A hand-written VJP that
# re-rotates text blocks in the backward pass would bring memory to O(n * d + n^2).
# --------------------------------------------------------------------------------------------

BATCH_AXES = ("data", "fsdp")


def _ring_size(mesh, axes, image_embeds, text_embeds, fn_name):
    axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
        raise ValueError(f"{fn_name}: mesh has no axes {missing} (mesh axes: {tuple(mesh.shape)})")
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(f"{fn_name}: image and text embeddings must both be (N, d), got "
                         f"{image_embeds.shape} and {text_embeds.shape}")
    n_global = image_embeds.shape[0]
    if n_global % size:
        raise ValueError(
            f"{fn_name}: the global batch ({n_global}) must be divisible by the number of devices on "
            f"the ring axes {axes} ({size}); every device needs an equal block of rows. Use a batch "
            f"size that is a multiple of {size}, or the global loss.")
    return axes, size


def _shift(x, axes, size):
    """Send this device's block to the next device on the (flattened) ring axes."""
    return jax.lax.ppermute(x, axes, perm=[(i, (i + 1) % size) for i in range(size)])


@jax.checkpoint
def _softmax_block(img, txt, scale, row_lse, col_lse):
    logits = scale * img @ txt.T  # (n, n): my images x the visiting text block
    row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
    col_lse = jnp.logaddexp(col_lse, jax.nn.logsumexp(logits, axis=0))
    return row_lse, col_lse


@jax.checkpoint
def _softmax_first_block(img, txt, scale):
    logits = scale * img @ txt.T
    pos = scale * jnp.sum(img * txt, axis=-1)  # the diagonal: matching pairs live on one device
    return jax.nn.logsumexp(logits, axis=1), jax.nn.logsumexp(logits, axis=0), pos


def ring_softmax_clip_loss(image_embeds, text_embeds, logit_scale, mesh, axes=BATCH_AXES):
    """`softmax_clip_loss` computed with a ring over the batch axes of `mesh`.

    Takes global (N, d) arrays (sharded over `axes`, or anything - shard_map reshards) and
    returns the same scalar with the same gradients, while each device only ever holds one
    n x n block of logits (n = N / D). The batch N must be divisible by the number of devices D
    on `axes` - the design needs equal per-device blocks; a ValueError says so otherwise.
    """
    axes, size = _ring_size(mesh, axes, image_embeds, text_embeds, "ring_softmax_clip_loss")
    n_global = image_embeds.shape[0]
    scale = clamped_scale(logit_scale)

    def local(img, txt, scale):
        img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
        row_lse, col_lse, pos = _softmax_first_block(img, txt, scale)

        def step(carry, _):
            txt, col_lse, row_lse = carry
            txt, col_lse = _shift(txt, axes, size), _shift(col_lse, axes, size)
            row_lse, col_lse = _softmax_block(img, txt, scale, row_lse, col_lse)
            return (txt, col_lse, row_lse), None

        if size > 1:
            (_, col_lse, row_lse), _ = jax.lax.scan(step, (txt, col_lse, row_lse), None, length=size - 1)
        # col_lse now holds complete LSEs of some other device's texts; only the sum matters.
        part = jnp.sum(row_lse) + jnp.sum(col_lse) - 2.0 * jnp.sum(pos)
        return jax.lax.psum(part, axes) / (2.0 * n_global)

    spec = P(axes, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=P())(
        image_embeds, text_embeds, scale)


@functools.partial(jax.checkpoint, static_argnums=(4,))
def _sigmoid_block(img, txt, scale, bias, diagonal: bool):
    logits = scale * img @ txt.T + bias
    if diagonal:  # block 0: matching pairs on the diagonal (z = +1), the rest negatives
        z = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
        return jnp.sum(jax.nn.log_sigmoid(z * logits))
    return jnp.sum(jax.nn.log_sigmoid(-logits))


def ring_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, mesh, axes=BATCH_AXES):
    """`sigmoid_loss` (SigLIP) computed with a ring over the batch axes of `mesh`.

    Same contract as `ring_softmax_clip_loss`: global (N, d) inputs, N divisible by the number
    of devices on `axes` (equal per-device blocks), the global loss's value and gradients, one
    n x n block of logits per device at a time. Only the text blocks rotate; the sum of
    log-sigmoids needs no normaliser, so nothing else travels.
    """
    axes, size = _ring_size(mesh, axes, image_embeds, text_embeds, "ring_sigmoid_loss")
    n_global = image_embeds.shape[0]
    scale = jnp.exp(logit_scale.astype(jnp.float32))
    bias = jnp.asarray(logit_bias, jnp.float32)

    def local(img, txt, scale, bias):
        img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
        acc = _sigmoid_block(img, txt, scale, bias, True)

        def step(carry, _):
            txt, acc = carry
            txt = _shift(txt, axes, size)
            return (txt, acc + _sigmoid_block(img, txt, scale, bias, False)), None

        if size > 1:
            (_, acc), _ = jax.lax.scan(step, (txt, acc), None, length=size - 1)
        return -jax.lax.psum(acc, axes) / n_global

    spec = P(axes, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P())(
        image_embeds, text_embeds, scale, bias)


def contrastive_loss(kind, impl, image_embeds, text_embeds, params, mesh=None, axes=BATCH_AXES):
    """One entry point for the CLIP losses.

    kind: "softmax" (InfoNCE, needs params["logit_scale"]) | "sigmoid" (SigLIP, also needs
    params["logit_bias"]). impl: "global" (materialised logits; GSPMD shards them under jit)
    | "ring" (shard_map ring over `axes` of `mesh`; needs the mesh).
    """
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown contrastive loss kind {kind!r} (softmax | sigmoid)")
    if impl not in ("global", "ring"):
        raise ValueError(f"unknown contrastive loss impl {impl!r} (global | ring)")
    if impl == "ring" and mesh is None:
        raise ValueError("contrastive_loss(impl='ring') needs the mesh")
    scale = params["logit_scale"]
    if kind == "softmax":
        if impl == "global":
            return softmax_clip_loss(image_embeds, text_embeds, scale)
        return ring_softmax_clip_loss(image_embeds, text_embeds, scale, mesh, axes)
    if "logit_bias" not in params:
        raise ValueError("the sigmoid loss needs params['logit_bias'] (set logit_bias_init in the model config)")
    bias = params["logit_bias"]
    if impl == "global":
        return sigmoid_loss(image_embeds, text_embeds, scale, bias)
    return ring_sigmoid_loss(image_embeds, text_embeds, scale, bias, mesh, axes)
