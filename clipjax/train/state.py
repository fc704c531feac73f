"""The training state, born sharded, and the one guarded update step every task shares."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
from flax import struct

from clipjax import sharding as shd
from clipjax.train.optimizer import make_optimizer


class TrainState(struct.PyTreeNode):
    step: jnp.ndarray
    variables: Any  # {"params": ..., ["batch_stats": ...]}
    opt_state: Any
    rng: jnp.ndarray  # raw uint32 PRNG key, split once per step (saved in checkpoints)
    ema: Any = None  # exponential moving average of the params (config.ema_decay > 0)
    nonfinite: jnp.ndarray = None  # 0, or the first step whose loss / gradient was not finite


def make_guarded_step(value_and_grad, tx: optax.GradientTransformation, ema_decay: float = 0.0):
    """`step(state, *batch) -> (state, metrics)` for any task whose
    `value_and_grad(params, other_variables, *batch, rng)` returns ((loss, updates), grads).

    One guarded update: when the loss or the gradient norm is not finite (or an earlier
    step's was), the update is dropped — params, optimizer state and EMA keep their last
    finite values — and `state.nonfinite` records the step, so the state never holds NaNs."""

    def step(state: TrainState, *batch):
        params = state.variables["params"]
        other = {k: v for k, v in state.variables.items() if k != "params"}
        rng, step_rng = jax.random.split(state.rng)
        (value, updates), grads = value_and_grad(params, other, *batch, step_rng)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(value) & jnp.isfinite(grad_norm) & (state.nonfinite == 0)
        upd, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, upd)
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        variables = keep({"params": new_params, **other, **updates}, state.variables)
        ema = state.ema
        if ema is not None:
            ema = keep(jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, new_params),
                       ema)
        nonfinite = jnp.where((state.nonfinite == 0) & ~ok, state.step + 1, state.nonfinite)
        metrics = {"loss": value, "grad_norm": grad_norm, "nonfinite": nonfinite}
        if "logit_scale" in variables["params"]:
            metrics["logit_scale"] = jnp.exp(variables["params"]["logit_scale"])
        new_state = state.replace(step=state.step + 1, variables=variables, opt_state=keep(opt_state, state.opt_state),
                                  rng=rng, ema=ema, nonfinite=nonfinite)
        return new_state, metrics

    return step


def opt_state_shardings(tx, params, replicated):
    """Shardings for `tx.init(params)`: every leaf shaped like a parameter whose path ends with
    that parameter's path (Adam's mu / nu, inside any chain, mask or multi_transform) gets the
    parameter's sharding; counts and the rest are replicated. Without them `jax.jit(tx.init)`
    replicates the moments (they are zeros, nothing propagates a sharding to them): 8 bytes per
    parameter on every device instead of 8 / fsdp."""
    flat = {tuple(str(k) for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(params)}
    lengths = sorted({len(k) for k in flat}, reverse=True)

    def place(path, leaf):
        keys = tuple(str(k) for k in path)
        for n in lengths:
            p = flat.get(keys[-n:]) if len(keys) >= n else None
            if p is not None and p.shape == leaf.shape:
                return p.sharding
        return replicated

    return jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))


def create_state(model, config, mesh, rules, dummy, post_init=None):
    """Initial TrainState, every array created already sharded on `mesh`. `dummy`: example
    inputs for `model.init`; `post_init(variables)`: replaces parts of the fresh sharded
    variables (a pretrained tower for LiT, a frozen CLIP under CLIPSeg, ...)."""
    rng = jax.random.PRNGKey(config.seed)
    rep = shd.replicated(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda r: model.init(r, *dummy), rng)
        var_sh = shd.logical_shardings(boxed, mesh, rules)
        variables = jax.jit(lambda r: nn.unbox(model.init(r, *dummy)), out_shardings=var_sh)(rng)
        if post_init is not None:
            variables = post_init(variables)
        tx, schedule = make_optimizer(config.optimizer, config.total_steps, variables["params"])
        # each moment sharded like its parameter (FSDP shards the optimizer state too)
        opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, variables["params"], rep))(
            variables["params"])
        ema = None
        if float(config.get("ema_decay", 0.0) or 0.0) > 0:
            ema = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=var_sh["params"])(
                variables["params"])
    state = TrainState(
        step=jax.device_put(np.zeros((), np.int32), rep), variables=variables, opt_state=opt_state,
        rng=jax.device_put(np.asarray(jax.random.PRNGKey(config.seed + 1)), rep), ema=ema,
        nonfinite=jax.device_put(np.zeros((), np.int32), rep))
    return state, tx, schedule
