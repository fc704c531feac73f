"""The same training step on any mesh: data x fsdp x tensor parallel equals one device, and a
checkpoint written on one mesh restores onto another."""

import os

import jax
import numpy as np
import flax.linen as nn

from clipjax import sharding as shd
from clipjax.data.pipeline import make_train_data
from clipjax.train import checkpoints as ckpt
from clipjax.tasks import clip as clip_task
from clipjax.train import state as train_state
from test_train_smoke import TINY_SHAPES


def _config():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.shapes.update(TINY_SHAPES)
    c.total_steps = 4
    c.batch_size = 16
    c.optimizer.warmup_steps = 0  # lr > 0 on the first step, so the update is visible
    c.optimizer.lr = 1e-3
    c.ema_decay = 0.9
    return c


def _setup(config, sizes, devices=None):
    cfg = clip_task.model_config(config)
    model = clip_task.CLIP(cfg)
    mesh = shd.make_mesh(sizes, devices)
    rules = shd.DEFAULT_RULES
    state, tx, _ = train_state.create_state(model, config, mesh, rules, clip_task.init_inputs(cfg))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(clip_task.make_train_step(model, tx, config.loss, config.ema_decay))
    return cfg, mesh, rules, state, step


def _run_steps(config, sizes, n, devices=None):
    cfg, mesh, rules, state, step = _setup(config, sizes, devices)
    data = make_train_data(config, cfg, mesh, rules)
    init = jax.device_get(state.variables["params"])
    losses = []
    for _ in range(n):
        images, ids = next(data)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            state, metrics = step(state, images, ids)
        losses.append(float(metrics["loss"]))
    return init, state, losses


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b)))


def test_3d_mesh_step_equals_one_device():
    config = _config()
    init1, s1, l1 = _run_steps(config, dict(data=1, fsdp=1, tensor=1), 2, devices=jax.devices()[:1])
    init8, s8, l8 = _run_steps(config, dict(data=2, fsdp=2, tensor=2), 2)
    # parameters really are sharded on the 3-D mesh (fsdp and tensor axes both used)
    specs = {tuple(x.sharding.spec) for x in jax.tree_util.tree_leaves(s8.variables["params"])}
    used = {a for spec in specs for part in spec if part for a in (part if isinstance(part, tuple) else (part,))}
    assert {"fsdp", "tensor"} <= used
    assert _max_diff(init1, init8) == 0.0  # initialisation does not depend on the mesh
    np.testing.assert_allclose(l1, l8, rtol=0, atol=1e-5)
    p1, p8 = jax.device_get(s1.variables["params"]), jax.device_get(s8.variables["params"])
    assert _max_diff(p1, init1) > 1e-4  # the steps changed the parameters
    assert _max_diff(p1, p8) < 1e-5
    assert _max_diff(jax.device_get(s1.ema), jax.device_get(s8.ema)) < 1e-5
    assert _max_diff(jax.device_get(s1.opt_state), jax.device_get(s8.opt_state)) < 1e-5
    np.testing.assert_array_equal(jax.device_get(s1.rng), jax.device_get(s8.rng))


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    config = _config()
    cfg = clip_task.model_config(config)
    _, state, _ = _run_steps(config, dict(data=8, fsdp=1, tensor=1), 1)
    mngr = ckpt.checkpoint_manager(str(tmp_path), config)
    ckpt.save(mngr, state, cfg, config, data_position=16)
    mngr.wait_until_finished()
    mngr.close()

    # a fresh state on a (2, 2, 2) mesh, then the checkpoint restored onto it
    _, mesh, _, fresh, _ = _setup(config, dict(data=2, fsdp=2, tensor=2))
    mngr = ckpt.checkpoint_manager(str(tmp_path), config)
    got, resume = ckpt.restore(mngr, fresh)
    mngr.close()
    assert resume.position == 16 and int(got.step) == 1
    for new, ref in zip(jax.tree_util.tree_leaves(got.variables), jax.tree_util.tree_leaves(fresh.variables)):
        assert new.sharding.is_equivalent_to(ref.sharding, new.ndim)  # on the new mesh's layout
    saved = jax.device_get(state.variables)
    restored = jax.device_get(got.variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, saved, restored)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.ema), jax.device_get(got.ema))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.opt_state),
                           jax.device_get(got.opt_state))
    np.testing.assert_array_equal(jax.device_get(state.rng), jax.device_get(got.rng))


def test_optimizer_moments_are_sharded_like_their_parameters():
    """FSDP shards the optimizer state too: Adam's mu and nu take their parameter's sharding
    (jax.jit(tx.init) alone replicates them: 8 bytes per parameter on every device)."""
    _, _, _, state, _ = _setup(_config(), dict(data=2, fsdp=4, tensor=1))
    params = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.variables["params"])}
    moments = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
               if x.ndim > 0]
    assert len(moments) == 2 * sum(1 for x in params.values() if x.ndim > 0)
    for path, x in moments:
        param = next(v for k, v in params.items() if path.endswith(k))
        assert x.sharding.is_equivalent_to(param.sharding, x.ndim), path
    assert any(not x.sharding.is_fully_replicated for _, x in moments)
