"""The training loop: one code path from one CPU to a pod.

config -> mesh -> state born sharded (jit(init, out_shardings)) -> per-process local batches
assembled into global arrays -> jitted step -> Orbax checkpoints in the clipjax format (so
`clipjax.load(workdir)` works on a run) -> the task's periodic evaluation.

The loop knows no model family: it receives `make_task(config, mesh, rules, workdir)` (see
clipjax.tasks, which picks one by config.task) and trains the Task it returns.
"""

from __future__ import annotations

import logging
import signal
import time

import jax
import flax.linen as nn

from clipjax import sharding as shd, storage
from clipjax.errors import ConfigError
from clipjax.train import checkpoints as ckpt, metrics as tm
from clipjax.train.distributed import gather_json, maybe_initialize_distributed
from clipjax.train.state import create_state, make_guarded_step

log = logging.getLogger("clipjax.train")


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


def data_states(data) -> list | None:
    """Each process's position in its own input stream (a shard stream, whose processes read
    different shards), gathered in process order for the checkpoint; None for streams whose
    global position says it all."""
    state = getattr(data, "state", None)
    return gather_json(state()) if callable(state) else None


def config_problems(config) -> list[str]:
    """What in the generic part of a training config the loop cannot run (one line each)."""
    problems = []
    for key in ("total_steps", "batch_size", "log_every"):
        if int(config.get(key, 0) or 0) <= 0:
            problems.append(f"{key} must be a positive integer (got {config.get(key)!r})")
    keep = config.get("keep_checkpoints", 1)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        problems.append(f"keep_checkpoints must be an integer >= 1: the newest checkpoint is always kept "
                        f"(got {keep!r})")
    if config.get("init_parts") and not config.get("init_from"):
        problems.append("config.init_parts is set but config.init_from is empty: give the pretrained checkpoint")
    return problems


def check_config(config, task_problems=None) -> None:
    """ValueError listing every problem of the config (the loop's keys, then the task's
    `task_problems(config)`), one per line."""
    problems = config_problems(config) + (list(task_problems(config)) if task_problems else [])
    if problems:
        raise ConfigError("bad training config:\n  " + "\n  ".join(problems))


def train(config, workdir: str, make_task, devices=None, task_problems=None, fresh_start: bool = False) -> dict:
    """Run (or resume) training of the Task `make_task(config, mesh, rules, workdir)` returns;
    returns the final metrics. `devices` (default: all) is the device list the mesh is built
    from; `task_problems(config)` lists what is wrong with the task's own keys. When the
    workdir holds checkpoints of which none restores, training stops (CheckpointError) unless
    `fresh_start`, which moves them aside and starts from scratch."""
    check_config(config, task_problems)
    maybe_initialize_distributed(config)  # before anything touches a device
    workdir = storage.normalize(workdir)
    storage.check_writable_location(workdir)  # an unreachable store or missing bucket: one line, now
    storage.makedirs(workdir)
    mesh = shd.make_mesh(dict(config.mesh), devices)
    num_devices = mesh.devices.size
    rules = shd.rules_from_config(config.get("axis_rules"))
    parts = shd.batch_shards(mesh, rules)
    if config.batch_size % parts:
        raise ConfigError(f"batch_size {config.batch_size} does not split over the {parts} devices of the batch axes "
                          f"of the mesh {dict(mesh.shape)}: use a multiple of {parts}")
    task = make_task(config, mesh, rules, workdir)
    cfg = task.cfg
    state, tx, schedule = create_state(task.model, config, mesh, rules, task.dummy_inputs, task.post_init)
    mngr = ckpt.checkpoint_manager(workdir, config)
    try:
        state, resume = ckpt.restore(mngr, state, fresh_start)
    except BaseException:
        mngr.close()
        raise
    start = int(state.step)
    if start >= config.total_steps:
        mngr.close()
        log.info("this run already finished: step %d of config.total_steps=%d; nothing to train (raise "
                 "--config.total_steps to train further)", start, config.total_steps)
        return {"step": start, "finished": True}
    if start:
        log.info("resumed from step %d", start)

    data_state = resume.data_state()
    data = task.make_data(resume.position) if data_state is None else task.make_data(resume.position, data_state)
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
            raise NonFiniteLossError(
                f"loss or gradient is not finite (NaN/Inf) at step {bad}: stopping without saving it. "
                f"The last good checkpoint is intact: {ckpt.resume_point(mngr)}; lower optimizer.lr or check "
                "the data.")

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
                ckpt.raise_save_errors(mngr)  # an async save that failed: stop here, once
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
                    try:
                        ckpt.save(mngr, state, cfg, config, data.position, data_states(data))
                    except Exception as e:  # noqa: BLE001 - the previous async save failed
                        raise ckpt.save_failure(mngr, e) from None
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
        close = getattr(data, "close", None)
        if close is not None:
            close()  # a tf.data generator left running keeps the process from exiting
        save_error = ckpt.close_manager(mngr)
        writer.close()
        png = tm.plot_loss_curve(workdir)
        if png:
            log.info("loss curve: %s", png)
    if save_error is not None:  # reached only when nothing else is failing
        raise save_error
    if last:
        last["step"] = int(last.get("step", reached))
    return last
