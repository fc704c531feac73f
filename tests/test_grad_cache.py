"""GradCache accumulation == the full-batch gradient (every negative kept), tiny CLIP."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.models.clip import CLIP
from clipjax.models.presets import get_preset
from clipjax.tasks.grad_cache import clip_embed_fns, clip_grad_cache, clip_loss_fn, grad_cache_value_and_grad

N, MICRO = 16, 4


@functools.cache
def _model():
    """One tiny CLIP (with a logit bias, which the softmax loss ignores) for every test."""
    cfg = get_preset("tiny-vit")
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, context_length=16), logit_bias_init=-10.0)
    model = CLIP(cfg)
    s = cfg.vision.image_size
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    images = jax.random.normal(k1, (N, s, s, 3))
    ids = jax.random.randint(k2, (N, 16), 1, 49406).at[:, -1].set(49407)  # end-of-text last
    variables = nn.unbox(jax.jit(model.init)(k3, images[:1], ids[:1]))
    return model, variables["params"], images, ids


def _full_batch(model, params, images, ids, kind):
    embed_image, embed_text = clip_embed_fns(model, train=True)
    loss_fn = clip_loss_fn(kind)

    def loss(p):
        return loss_fn(p, embed_image(p, images, None), embed_text(p, ids, None))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_grad_cache_equals_full_batch(kind):
    model, params, images, ids = _model()
    want_loss, want = _full_batch(model, params, images, ids, kind)
    fn = jax.jit(clip_grad_cache(model, kind, num_micro=MICRO))
    got_loss, got = fn(params, {}, images, ids, jax.random.PRNGKey(1))

    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(want))
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))
    print(f"{kind}: loss {float(want_loss):.6f} vs {float(got_loss):.6f}; "
          f"max |grad diff| {diff:.2e}, largest |grad| {scale:.2e}")
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    assert diff <= 1e-5 * max(1.0, scale)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert float(jnp.abs(got["logit_scale"])) > 0  # loss-only params get their gradient too


def test_grad_cache_differs_from_naive_accumulation():
    """Sanity: averaging per-micro-batch losses (fewer negatives) is a different objective, so
    the equality above is not trivially satisfied. Deterministic towers embed row by row, so
    the micro-batch losses can be read off the full-batch embeddings."""
    model, params, images, ids = _model()
    embed_image, embed_text = clip_embed_fns(model, train=True)
    img, txt = jax.jit(lambda p: (embed_image(p, images, None), embed_text(p, ids, None)))(params)
    loss_fn = clip_loss_fn("softmax")
    full = float(loss_fn(params, img, txt))
    naive = np.mean([float(loss_fn(params, img[k::MICRO], txt[k::MICRO])) for k in range(MICRO)])
    print(f"full-batch loss {full:.4f}, naive accumulation {naive:.4f}")
    assert abs(naive - full) > 0.1


def test_generic_function_pytree_inputs_and_errors():
    """The generic entry point with a toy linear 'tower' and dict inputs; bad splits raise."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    params = {"w": jax.random.normal(k1, (6, 4)), "logit_scale": jnp.float32(1.0)}
    x = {"a": jax.random.normal(k2, (12, 6))}

    def embed(p, batch, rng):
        e = batch["a"] @ p["w"]
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    def loss_fn(p, i, t):
        return clip_loss_fn("softmax")(p, i, jnp.roll(t, 1, axis=1))

    full = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, embed(p, x, None), embed(p, x, None))))(params)
    got = jax.jit(lambda p: grad_cache_value_and_grad(embed, embed, loss_fn, p, x, x, num_micro=3))(params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="micro-batches"):
        grad_cache_value_and_grad(embed, embed, loss_fn, params, x, x, num_micro=5)


def test_batchnorm_towers_rejected_in_training():
    with pytest.raises(ValueError, match="BatchNorm"):
        clip_embed_fns(CLIP(get_preset("tiny-rn")), {"batch_stats": {}}, train=True)
    clip_embed_fns(CLIP(get_preset("tiny-rn")), {"batch_stats": {}}, train=False)  # running averages: fine


def test_grad_cache_with_ring_loss_on_mesh():
    """Sharded batch, strided micro-batches, ring loss inside: still the full-batch gradient."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from clipjax.sharding import make_mesh

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(4), 3)
    params = {"wi": jax.random.normal(k1, (6, 4)), "wt": jax.random.normal(k2, (5, 4)),
              "logit_scale": jnp.float32(2.0), "logit_bias": jnp.float32(-3.0)}
    sh = NamedSharding(mesh, P(("data", "fsdp"), None))
    x = jax.device_put(jax.random.normal(k3, (48, 6)), sh)
    t = jax.device_put(x[:, :5] + 0.5, sh)
    norm = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    ei = lambda p, b, r: norm(b @ p["wi"])
    et = lambda p, b, r: norm(b @ p["wt"])
    for kind in ("softmax", "sigmoid"):
        ring, glob = clip_loss_fn(kind, "ring", mesh), clip_loss_fn(kind)
        full = jax.jit(jax.value_and_grad(lambda p, g=glob: g(p, ei(p, x, None), et(p, t, None))))(params)
        got = jax.jit(lambda p, r=ring: grad_cache_value_and_grad(ei, et, r, p, x, t, num_micro=3))(params)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(full)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
