"""Ring contrastive losses == the global reference (value and gradients), on 8 forced CPU
devices; the clamp; the divisibility error; and compiled memory, ring vs global logits."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.losses import contrastive as losses
from clipjax.sharding import make_mesh

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOL = 1e-5


def _embeds(n, d=16, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    img = norm(jax.random.normal(k1, (n, d)))
    # loosely correlated texts: the loss is neither at its random plateau nor near zero
    txt = norm(img + 1.5 * norm(jax.random.normal(k2, (n, d))))
    return img, txt


def _max_err(a, b):
    """Largest |a - b| over the leaves, relative to max(1, |b|) leaf by leaf."""
    errs = [float(jnp.max(jnp.abs(x - y))) / max(1.0, float(jnp.max(jnp.abs(y))))
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return max(errs)


MESHES = {
    "data8": {"data": -1, "fsdp": 1, "tensor": 1},
    "data2xfsdp4": {"data": 2, "fsdp": 4, "tensor": 1},
    "data2xfsdp2xtensor2": {"data": 2, "fsdp": 2, "tensor": 2},
    "ring-size-1": {"data": 1, "fsdp": 1, "tensor": 8},
}


def _ring_devices(mesh):
    return mesh.shape["data"] * mesh.shape["fsdp"]


CASES = ([("data8", b) for b in (1, 3, 5, 64)]  # ring of 8, several per-device sizes
         + [(m, 3) for m in MESHES if m != "data8"])  # rings over (data, fsdp) jointly, size 4 and 1


@pytest.mark.parametrize("mesh_name,per_device", CASES)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_ring_equals_global(kind, mesh_name, per_device):
    mesh = make_mesh(MESHES[mesh_name])
    n = per_device * _ring_devices(mesh)
    img, txt = _embeds(n, seed=per_device)
    params = {"logit_scale": jnp.float32(np.log(10.0)), "logit_bias": jnp.float32(-2.0)}

    def loss(impl):
        return jax.jit(jax.value_and_grad(
            lambda i, t, p: losses.contrastive_loss(kind, impl, i, t, p, mesh=mesh), argnums=(0, 1, 2)))

    want = loss("global")(img, txt, params)
    got = loss("ring")(img, txt, params)
    err = _max_err(got, want)
    print(f"{kind} {mesh_name} N={n}: loss {float(want[0]):.6f}, max rel err (loss, d/dimg, d/dtxt, "
          f"d/dscale, d/dbias) {err:.2e}")
    assert err <= TOL
    if n > 1:  # (softmax over one pair is identically 0)
        assert float(jnp.abs(want[1][2]["logit_scale"])) > 1e-3  # the scale gradient is exercised
    if kind == "sigmoid":
        assert float(jnp.abs(want[1][2]["logit_bias"])) > 1e-3


def test_ring_direct_calls_sharded_inputs():
    """Called on arrays already sharded over the batch axes (here a 4 x 2 ring)."""
    mesh = make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    img, txt = _embeds(40)
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
    img, txt = jax.device_put(img, sh), jax.device_put(txt, sh)
    s, b = jnp.float32(2.0), jnp.float32(-1.0)
    np.testing.assert_allclose(jax.jit(lambda *a: losses.ring_softmax_clip_loss(*a, mesh))(img, txt, s),
                               losses.softmax_clip_loss(img, txt, s), rtol=TOL)
    np.testing.assert_allclose(jax.jit(lambda *a: losses.ring_sigmoid_loss(*a, mesh))(img, txt, s, b),
                               losses.sigmoid_loss(img, txt, s, b), rtol=TOL)


def test_logit_scale_clamp_in_both():
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    img, txt = _embeds(16)
    big = jnp.float32(np.log(300.0))  # exp(.) = 300 -> clamped to 100
    ref100 = losses.softmax_clip_loss(img, txt, jnp.float32(np.log(100.0)))
    for fn in (losses.softmax_clip_loss, lambda i, t, s: losses.ring_softmax_clip_loss(i, t, s, mesh)):
        value, g = jax.jit(jax.value_and_grad(fn, argnums=2))(img, txt, big)
        np.testing.assert_allclose(value, ref100, rtol=TOL)
        assert float(g) == 0.0  # no gradient through the clamp


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_indivisible_batch_raises(kind):
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    img, txt = _embeds(12)  # 12 rows over 8 devices
    params = {"logit_scale": jnp.float32(1.0), "logit_bias": jnp.float32(0.0)}
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        losses.contrastive_loss(kind, "ring", img, txt, params, mesh=mesh)


def test_dispatch_errors():
    img, txt = _embeds(8)
    with pytest.raises(ValueError, match="needs the mesh"):
        losses.contrastive_loss("softmax", "ring", img, txt, {"logit_scale": jnp.float32(1.0)})
    with pytest.raises(ValueError, match="logit_bias"):
        losses.contrastive_loss("sigmoid", "global", img, txt, {"logit_scale": jnp.float32(1.0)})
    with pytest.raises(ValueError, match="unknown"):
        losses.contrastive_loss("hinge", "global", img, txt, {"logit_scale": jnp.float32(1.0)})


def test_ring_memory_scales_better_than_global_logits():
    """Compiled temp memory of jit(grad(loss)) per device, one subprocess per device count
    (XLA_FLAGS must be set before jax is imported). Per-device batch 256, d = 128."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import loss_memory
    finally:
        sys.path.pop(0)
    per_device, dim = 256, 128
    res = loss_memory.measure([8, 16, 32], per_device, dim, timeout=120)
    print("\n" + loss_memory.table(res, per_device, dim))
    for kind in ("softmax", "sigmoid"):
        ring = [res[d][f"{kind}/ring"] for d in (8, 16, 32)]
        glob = [res[d][f"{kind}/global"] for d in (8, 16, 32)]
        assert ring[2] <= 0.5 * glob[2], (kind, ring, glob)
        # global logits grow linearly with N; the ring's growth is only the N * d residuals
        assert (ring[2] - ring[0]) < 0.5 * (glob[2] - glob[0]), (kind, ring, glob)
