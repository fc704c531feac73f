"""The training loop: one code path from one CPU to a pod.

config -> mesh -> state born sharded (jit(init, out_shardings)) -> per-process local batches
assembled into global arrays -> jitted step -> Orbax checkpoints in the clipjax format (so
`clipjax.load(workdir)` works on a run) -> periodic zero-shot evaluation.
"""

from __future__ import annotations

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
from clipjax.train import checkpoints as ckpt
from clipjax.train import metrics as tm
from clipjax.train.checkpoints import checkpoint_manager, restore, save  # noqa: F401  (public here too)
from clipjax.losses import contrastive_loss
from clipjax.train.grad_cache import clip_grad_cache
from clipjax.models.clip import CLIP
from clipjax.models.config import CLIPConfig
from clipjax.tokenizer import text_attention_mask
from clipjax.train.optimizer import make_optimizer

log = logging.getLogger("clipjax.train")


class TrainState(struct.PyTreeNode):
    step: jnp.ndarray
    variables: Any  # {"params": ..., ["batch_stats": ...]}
    opt_state: Any
    rng: jnp.ndarray  # raw uint32 PRNG key, split once per step (saved in checkpoints)
    ema: Any = None  # exponential moving average of the params (config.ema_decay > 0)
    nonfinite: jnp.ndarray = None  # 0, or the first step whose loss / gradient was not finite


def model_config(config) -> CLIPConfig:
    return CLIPConfig.from_dict(config.model.to_dict())


def make_loss_fn(model: CLIP, loss: str, impl: str = "global", mesh=None):
    """(params, other_variables, images, ids, rng) -> (loss, batch-stat updates).
    impl "ring" computes the contrastive loss with the shard_map ring over the batch axes."""

    def loss_fn(params, other, images, ids, rng):
        variables = {"params": params, **other}
        mutable = ["batch_stats"] if "batch_stats" in other else False
        mask = text_attention_mask(model.cfg.text, ids)  # None for causal towers
        out = model.apply(variables, images, ids, attention_mask=mask, train=True, rngs={"dropout": rng},
                          mutable=mutable)
        out, updates = out if mutable else (out, {})
        value = contrastive_loss(loss, impl, out["image_embeds"], out["text_embeds"], params, mesh)
        return value, updates

    return loss_fn


def make_value_and_grad(model: CLIP, loss: str, impl: str = "global", accum_steps: int = 1, mesh=None):
    """(params, other, images, ids, rng) -> ((loss, updates), grads). With accum_steps > 1 the
    gradient is accumulated GradCache-style: every negative of the global batch is kept and
    only one micro-batch's activations are live at a time."""
    if accum_steps <= 1:
        return jax.value_and_grad(make_loss_fn(model, loss, impl, mesh), has_aux=True)
    fn = clip_grad_cache(model, loss, accum_steps, impl, mesh, train=True)

    def value_and_grad(params, other, images, ids, rng):
        value, grads = fn(params, other, images, ids, rng)
        return (value, {}), grads

    return value_and_grad


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


def make_train_step(model: CLIP, tx: optax.GradientTransformation, loss: str, ema_decay: float = 0.0,
                    loss_impl: str = "global", accum_steps: int = 1, mesh=None):
    """The CLIP step: `step(state, images, ids)` (see make_guarded_step)."""
    return make_guarded_step(make_value_and_grad(model, loss, loss_impl, accum_steps, mesh), tx, ema_decay)


def load_pretrained_parts(variables, path: str, parts=None):
    """Replace top-level parts ("visual", "text", "logit_scale", ...) of freshly initialised,
    sharded `variables` with those of a pretrained checkpoint (any format clipjax.load reads),
    placed on the same shardings. Used by LiT (a locked, pretrained image tower)."""
    from clipjax.api import read_any
    from clipjax.convert.common import CheckpointError, flatten_variables

    _, loaded = read_any(path)
    parts = list(parts) if parts else list(loaded["params"])
    out = {col: dict(tree) for col, tree in variables.items()}
    for col, tree in loaded.items():
        for part in parts:
            if part not in tree:
                continue
            if part not in out.get(col, {}):
                raise CheckpointError(f"init_from {path}: the model has no {col}/{part}")
            mine, theirs = flatten_variables({part: out[col][part]}), flatten_variables({part: tree[part]})
            bad = [f"{k}: model {tuple(np.shape(mine.get(k)))} vs checkpoint {tuple(np.shape(v))}"
                   for k, v in theirs.items() if k not in mine or np.shape(mine[k]) != np.shape(v)]
            if bad or set(mine) != set(theirs):
                raise CheckpointError(f"init_from {path}: {col}/{part} does not fit: " + "; ".join(bad[:8]))
            out[col][part] = jax.tree_util.tree_map(
                lambda cur, new: jax.device_put(np.asarray(new, cur.dtype), cur.sharding), out[col][part], tree[part])
    missing = [p for p in parts if not any(p in tree for tree in loaded.values())]
    if missing:
        raise CheckpointError(f"init_from {path}: checkpoint has no {missing}")
    log.info("initialised %s from %s", ", ".join(parts), path)
    return out


def create_state(model, cfg, config, mesh, rules, dummy=None, post_init=None):
    """Initial TrainState, every array created already sharded on `mesh`. `dummy`: example
    inputs for `model.init` (default: CLIP's image + ids); `post_init(variables)`: replaces
    parts of the fresh sharded variables (e.g. a frozen pretrained CLIP under CLIPSeg)."""
    if dummy is None:
        s = cfg.vision.image_size
        dummy = (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, cfg.text.context_length), jnp.int32))
    rng = jax.random.PRNGKey(config.seed)
    rep = shd.replicated(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda r: model.init(r, *dummy), rng)
        var_sh = shd.logical_shardings(boxed, mesh, rules)
        variables = jax.jit(lambda r: nn.unbox(model.init(r, *dummy)), out_shardings=var_sh)(rng)
        if config.get("init_parts") and not config.get("init_from"):
            raise ValueError("config.init_parts is set but config.init_from is empty: give the pretrained checkpoint")
        if post_init is not None:
            variables = post_init(variables)
        elif config.get("init_from"):
            variables = load_pretrained_parts(variables, config.init_from, config.get("init_parts") or None)
        tx, schedule = make_optimizer(config.optimizer, config.total_steps, variables["params"])
        # optimizer moments inherit the parameters' shardings through GSPMD propagation
        opt_state = jax.jit(tx.init)(variables["params"])
        ema = None
        if float(config.get("ema_decay", 0.0) or 0.0) > 0:
            ema = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=var_sh["params"])(
                variables["params"])
    state = TrainState(
        step=jax.device_put(np.zeros((), np.int32), rep), variables=variables, opt_state=opt_state,
        rng=jax.device_put(np.asarray(jax.random.PRNGKey(config.seed + 1)), rep), ema=ema,
        nonfinite=jax.device_put(np.zeros((), np.int32), rep))
    return state, tx, schedule


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/Inf loss or gradient; no checkpoint was written for it."""


class _Interrupt:
    """SIGTERM / SIGINT (preemption) set a flag; the loop saves and exits at the next step.

    With several processes SIGTERM is left to JAX's preemption service (installed by
    jax.distributed.initialize), which all processes poll at the same step."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.hit = False
        self._signals = signals
        self._old = {}

    def __enter__(self):
        for sig in self._signals:
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


def _preempted(step: int) -> bool:
    if jax.process_count() == 1:
        return False
    try:
        from jax.experimental import multihost_utils

        return bool(multihost_utils.reached_preemption_sync_point(step))
    except Exception:  # preemption service not running
        return False


def validate_config(config) -> None:
    """Fail at start, with the key named, on settings the loop cannot run."""
    problems = []
    for key in ("total_steps", "batch_size", "log_every"):
        if int(config.get(key, 0) or 0) <= 0:
            problems.append(f"{key} must be a positive integer (got {config.get(key)!r})")
    if config.get("loss") not in ("softmax", "sigmoid"):
        problems.append(f"loss must be 'softmax' or 'sigmoid' (got {config.get('loss')!r})")
    if config.get("loss_impl", "global") not in ("global", "ring"):
        problems.append(f"loss_impl must be 'global' or 'ring' (got {config.get('loss_impl')!r})")
    accum = int(config.get("accum_steps", 1) or 1)
    if accum < 1 or (int(config.get("batch_size", 0) or 0) % accum):
        problems.append(f"accum_steps={accum} must be >= 1 and divide batch_size={config.get('batch_size')}")
    if config.get("loss") == "sigmoid" and config.model.get("logit_bias_init") is None:
        problems.append("loss='sigmoid' needs model.logit_bias_init (e.g. -10)")
    if problems:
        raise ValueError("bad training config:\n  " + "\n  ".join(problems))


def train(config, workdir: str, devices=None) -> dict:
    """Run (or resume) training; returns the final metrics. `devices` (default: all) is the
    device list the mesh is built from."""
    from clipjax.train.distributed import maybe_initialize_distributed
    from clipjax.train.tasks import build_task

    validate_config(config)
    maybe_initialize_distributed(config)  # before anything touches a device
    os.makedirs(workdir, exist_ok=True)
    mesh = shd.make_mesh(dict(config.mesh), devices)
    num_devices = mesh.devices.size
    rules = shd.rules_from_config(config.get("axis_rules"))
    task = build_task(config, mesh, rules, workdir)
    cfg = task.cfg
    state, tx, schedule = create_state(task.model, cfg, config, mesh, rules, task.dummy_inputs, task.post_init)
    mngr = ckpt.checkpoint_manager(workdir, config)
    state, position = ckpt.restore(mngr, state)
    start = int(state.step)
    if start:
        log.info("resumed from step %d", start)

    data = task.make_data(position)
    evaluator = task.make_evaluator()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step_fn = jax.jit(make_guarded_step(task.value_and_grad, tx, float(config.get("ema_decay", 0.0) or 0.0)),
                          donate_argnums=(0,))
    writer = tm.MetricsWriter(workdir, tensorboard=bool(config.get("tensorboard", True)))
    peak = float(config.get("peak_flops_per_device", 0.0) or 0.0)
    flops: dict = {}
    last: dict = {}
    t0 = time.time()
    reached = start

    def check(metrics):
        bad = int(metrics["nonfinite"])
        if bad:
            good = ckpt.committed_steps(mngr) if jax.process_index() == 0 else []
            raise NonFiniteLossError(
                f"loss or gradient is not finite (NaN/Inf) at step {bad}: stopping without saving it. "
                f"The last good checkpoint (step {good[0] if good else None}) in "
                f"{ckpt.checkpoint_dir(workdir)} is intact; lower optimizer.lr or check the data.")

    sigs = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
    try:
        with _Interrupt(sigs) as interrupt:
            previous = None
            for step in range(start, config.total_steps):
                batch = tuple(next(data))
                with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                    if step == start:
                        compiled = step_fn.lower(state, *batch).compile()
                        flops = tm.step_flops(step_fn, compiled, num_devices, state, *batch)
                        t0 = time.time()  # compilation is not a step
                        if flops:
                            writer.write({"step": step, **flops})
                    state, metrics = step_fn(state, *batch)
                raw = metrics
                done = reached = step + 1
                if previous is not None:  # one step behind: no pipeline stall
                    check(previous)
                previous = raw
                if done % config.log_every == 0 or done == config.total_steps:
                    check(raw)
                    metrics = {k: float(v) for k, v in raw.items() if k != "nonfinite"}
                    dt = time.time() - t0
                    t0 = time.time()
                    n = config.log_every if done % config.log_every == 0 else done % config.log_every
                    n = min(n, done - start)
                    metrics.update(step=done, lr=float(schedule(done - 1)),
                                   images_per_s=n * config.batch_size / dt, step_time_s=dt / n)
                    u = tm.mfu(flops.get("flops_per_step"), dt / n, peak, num_devices)
                    if u is not None:
                        metrics["mfu"] = u
                    counts = data.counts() if hasattr(data, "counts") else None
                    if counts:  # a collection: what the decoder converted or skipped so far
                        metrics.update({f"data/{k}": v for k, v in counts.items()})
                        skipped = {k: v for k, v in counts.items() if k.startswith("skipped_") and v}
                        if skipped:
                            log.info("data: %d examples decoded, skipped so far %s", counts.get("decoded", 0), skipped)
                    last = metrics
                    writer.write(metrics)
                    log.info("step %d loss %.4f lr %.2e %.1f img/s %.3f s/step%s", done, metrics["loss"],
                             metrics["lr"], metrics["images_per_s"], metrics["step_time_s"],
                             f" MFU {100 * u:.1f}%" if u is not None else "")
                if evaluator and (done % max(1, config.eval_every) == 0 or done == config.total_steps):
                    check(raw)
                    ev = evaluator(state.variables)  # sharded; only embeddings are gathered
                    ev["step"] = done
                    writer.write(ev)
                    last.update(ev)
                    log.info("step %d eval %s", done, {k: round(v, 4) for k, v in ev.items() if k != "step"})
                stop = interrupt.hit or _preempted(done)
                if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.total_steps or stop:
                    check(raw)  # never save a state that saw a non-finite step
                    ckpt.save(mngr, state, cfg, config, data.position)
                if stop:
                    log.warning("stopped at step %d (checkpoint saved)", done)
                    writer.write({"step": done, "event": "interrupted"})
                    break
            if previous is not None:
                check(previous)
    except NonFiniteLossError as e:
        log.error("%s", e)
        writer.write({"step": reached, "event": "nonfinite", "message": str(e)})
        raise
    finally:
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
        png = tm.plot_loss_curve(workdir)
        if png:
            log.info("loss curve: %s", png)
    if last:
        last["step"] = int(last.get("step", reached))
    return last
