"""The training loop: one code path from one CPU to a pod.

config -> mesh -> state born sharded (jit(init, out_shardings)) -> per-process local batches
assembled into global arrays -> jitted step -> Orbax checkpoints in the clipjax format (so
`clipjax.load(workdir)` works on a run) -> periodic zero-shot evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
from flax import struct

from clipjax import sharding as shd
from clipjax.checkpoint import CONFIG_ITEM, MODEL_ITEM
from clipjax.losses import sigmoid_loss, softmax_clip_loss
from clipjax.models.clip import CLIP
from clipjax.models.config import CLIPConfig
from clipjax.train.optimizer import make_optimizer

log = logging.getLogger("clipjax.train")


class TrainState(struct.PyTreeNode):
    step: jnp.ndarray
    variables: Any  # {"params": ..., ["batch_stats": ...]}
    opt_state: Any


def model_config(config) -> CLIPConfig:
    return CLIPConfig.from_dict(config.model.to_dict())


def make_loss_fn(model: CLIP, loss: str):
    def loss_fn(params, other, images, ids, rng):
        variables = {"params": params, **other}
        mutable = ["batch_stats"] if "batch_stats" in other else False
        out = model.apply(variables, images, ids, train=True, rngs={"dropout": rng}, mutable=mutable)
        out, updates = out if mutable else (out, {})
        img, txt = out["image_embeds"], out["text_embeds"]
        if loss == "softmax":
            value = softmax_clip_loss(img, txt, params["logit_scale"])
        elif loss == "sigmoid":
            value = sigmoid_loss(img, txt, params["logit_scale"], params["logit_bias"])
        else:
            raise ValueError(f"unknown loss {loss!r} (softmax | sigmoid)")
        return value, updates

    return loss_fn


def make_train_step(model: CLIP, tx: optax.GradientTransformation, loss: str):
    loss_fn = make_loss_fn(model, loss)

    def step(state: TrainState, images, ids, rng):
        params = state.variables["params"]
        other = {k: v for k, v in state.variables.items() if k != "params"}
        rng = jax.random.fold_in(rng, state.step)
        (value, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, other, images, ids, rng)
        upd, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, upd)
        variables = {"params": params, **other, **updates}
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
                   "logit_scale": jnp.exp(params["logit_scale"])}
        return state.replace(step=state.step + 1, variables=variables, opt_state=opt_state), metrics

    return step


def create_state(model: CLIP, cfg: CLIPConfig, config, mesh, rules):
    """Initial TrainState, every array created already sharded on `mesh`."""
    s = cfg.vision.image_size
    dummy = (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, cfg.text.context_length), jnp.int32))
    rng = jax.random.PRNGKey(config.seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda r: model.init(r, *dummy), rng)
        var_sh = shd.logical_shardings(boxed, mesh, rules)
        variables = jax.jit(lambda r: nn.unbox(model.init(r, *dummy)), out_shardings=var_sh)(rng)
        tx, schedule = make_optimizer(config.optimizer, config.total_steps, variables["params"])
        # optimizer moments inherit the parameters' shardings through GSPMD propagation
        opt_state = jax.jit(tx.init)(variables["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), variables=variables, opt_state=opt_state)
    return state, tx, schedule


def checkpoint_manager(workdir: str, config):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             enable_async_checkpointing=True),
    )


def save(mngr, state: TrainState, cfg: CLIPConfig, config, data_position: int):
    import orbax.checkpoint as ocp

    step = int(state.step)
    mngr.save(step, args=ocp.args.Composite(**{
        MODEL_ITEM: ocp.args.StandardSave(state.variables),
        CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
        "opt_state": ocp.args.StandardSave(state.opt_state),
        "train_state": ocp.args.JsonSave({"step": step, "data_position": data_position}),
        "train_config": ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    }), force=True)


def restore(mngr, state: TrainState):
    """Restore the latest finished step onto `state`'s shardings (any mesh)."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    if step is None:
        return state, 0
    target = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    got = mngr.restore(step, args=ocp.args.Composite(**{
        MODEL_ITEM: ocp.args.StandardRestore(target(state.variables)),
        "opt_state": ocp.args.StandardRestore(target(state.opt_state)),
        "train_state": ocp.args.JsonRestore(),
    }))
    meta = got["train_state"]
    state = state.replace(step=jnp.asarray(meta["step"], jnp.int32), variables=got[MODEL_ITEM],
                          opt_state=got["opt_state"])
    return state, int(meta["data_position"])


class _Interrupt:
    """SIGTERM / SIGINT (preemption) set a flag; the loop saves and exits at the next step."""

    def __init__(self):
        self.hit = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: saving a checkpoint and stopping", signum)
        self.hit = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config, workdir: str) -> dict:
    """Run (or resume) training; returns the final metrics."""
    from clipjax.data.pipeline import make_train_data
    from clipjax.evaluation.zeroshot import make_periodic_evaluator

    os.makedirs(workdir, exist_ok=True)
    cfg = model_config(config)
    model = CLIP(cfg)
    mesh = shd.make_mesh(dict(config.mesh))
    rules = shd.rules_from_config(config.get("axis_rules"))
    state, tx, schedule = create_state(model, cfg, config, mesh, rules)
    mngr = checkpoint_manager(workdir, config)
    state, position = restore(mngr, state)
    start = int(state.step)
    if start:
        log.info("resumed from step %d", start)

    data = make_train_data(config, cfg, mesh, rules, position)
    evaluator = make_periodic_evaluator(config, cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step_fn = jax.jit(make_train_step(model, tx, config.loss), donate_argnums=(0,))
    rng = jax.random.PRNGKey(config.seed + 1)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    history = []
    last = {}
    t0 = time.time()
    with _Interrupt() as interrupt, open(metrics_path, "a") as mfile:
        for step in range(start, config.total_steps):
            images, ids = next(data)
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                state, metrics = step_fn(state, images, ids, rng)
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = {k: float(v) for k, v in metrics.items()}
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"loss is {metrics['loss']} at step {done}; stopping. The last good checkpoint "
                        f"(step {mngr.latest_step()}) in {workdir} is intact.")
                dt = time.time() - t0
                t0 = time.time()
                n = config.log_every if done % config.log_every == 0 else done % config.log_every
                metrics.update(step=done, lr=float(schedule(done)), images_per_s=n * config.batch_size / dt,
                               step_time_s=dt / n)
                last = metrics
                history.append(metrics)
                mfile.write(json.dumps(metrics) + "\n")
                mfile.flush()
                log.info("step %d loss %.4f lr %.2e %.1f img/s", done, metrics["loss"], metrics["lr"],
                         metrics["images_per_s"])
            if evaluator and (done % config.eval_every == 0 or done == config.total_steps):
                ev = evaluator(state.variables)
                ev["step"] = done
                mfile.write(json.dumps(ev) + "\n")
                mfile.flush()
                last.update(ev)
                log.info("step %d eval %s", done, {k: round(v, 4) for k, v in ev.items() if k != "step"})
            if done % config.checkpoint_every == 0 or done == config.total_steps or interrupt.hit:
                save(mngr, state, cfg, config, data.position)
            if interrupt.hit:
                break
    mngr.wait_until_finished()
    mngr.close()
    return last
