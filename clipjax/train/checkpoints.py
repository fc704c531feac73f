"""Training checkpoints: Orbax steps under WORKDIR/checkpoints in the clipjax format.

Items of a step: "model" (variables) and "model_config" (what `clipjax.load` reads),
"opt_state", "ema" (when config.ema_decay > 0), "train_state" (JSON: step, data position,
the PRNG key) and "train_config". Saves are asynchronous; Orbax writes a step into a
`<step>.orbax-checkpoint-tmp` directory and renames it when complete, and restore also
requires the commit timestamp in `_CHECKPOINT_METADATA`, so a half-written step is never
restored. Restoring into ShapeDtypeStructs carrying the current mesh's shardings re-shards a
checkpoint written on any other mesh.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.checkpoint_format import CONFIG_ITEM, MODEL_ITEM

log = logging.getLogger("clipjax.train")

EMA_ITEM = "ema"
OPT_ITEM = "opt_state"
TRAIN_STATE_ITEM = "train_state"
TRAIN_CONFIG_ITEM = "train_config"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def checkpoint_manager(workdir: str, config):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             enable_async_checkpointing=True))


def is_committed(step_dir: str) -> bool:
    """A step directory Orbax finished: final name and a commit timestamp in its metadata."""
    meta = os.path.join(step_dir, "_CHECKPOINT_METADATA")
    try:
        with open(meta) as f:
            return json.load(f).get("commit_timestamp_nsecs") is not None
    except (OSError, ValueError):
        return False


def committed_steps(mngr) -> list[int]:
    """Finished steps, newest first (Orbax already skips *.orbax-checkpoint-tmp dirs)."""
    root = str(mngr.directory)
    return [s for s in sorted(mngr.all_steps(), reverse=True) if is_committed(os.path.join(root, str(s)))]


def save(mngr, state, cfg, config, data_position: int) -> int:
    """Queue an async save of `state` as step state.step; returns the step."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    items = {
        MODEL_ITEM: ocp.args.StandardSave(state.variables),
        CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
        OPT_ITEM: ocp.args.StandardSave(state.opt_state),
        TRAIN_STATE_ITEM: ocp.args.JsonSave({
            "step": step, "data_position": int(data_position),
            "rng": [int(x) for x in np.asarray(jax.device_get(_replicated_host(state.rng))).ravel()]}),
        TRAIN_CONFIG_ITEM: ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    }
    if state.ema is not None:
        items[EMA_ITEM] = ocp.args.StandardSave(state.ema)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    return step


def _replicated_host(x):
    """The value of a replicated array, readable on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_shards[0].data
    return x


def _target(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(mngr, state):
    """Restore the newest committed step onto `state`'s shardings (any mesh) -> (state,
    data_position). Falls back to an older step when the newest cannot be read."""
    import orbax.checkpoint as ocp

    steps = committed_steps(mngr)
    skipped = sorted(set(mngr.all_steps()) - set(steps))
    if skipped:
        log.warning("ignoring unfinished checkpoint steps %s", skipped)
    for step in steps:
        items = {
            MODEL_ITEM: ocp.args.StandardRestore(_target(state.variables)),
            OPT_ITEM: ocp.args.StandardRestore(_target(state.opt_state)),
            TRAIN_STATE_ITEM: ocp.args.JsonRestore(),
        }
        has_ema = os.path.isdir(os.path.join(str(mngr.directory), str(step), EMA_ITEM))
        if state.ema is not None and has_ema:
            items[EMA_ITEM] = ocp.args.StandardRestore(_target(state.ema))
        try:
            got = mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - a damaged step: try the one before
            log.warning("checkpoint step %d cannot be restored (%s: %s); trying an older one",
                        step, type(e).__name__, e)
            continue
        meta = got[TRAIN_STATE_ITEM]
        rep = state.step.sharding
        new = state.replace(
            step=jax.device_put(jnp.asarray(meta["step"], jnp.int32), rep),
            variables=got[MODEL_ITEM], opt_state=got[OPT_ITEM])
        if meta.get("rng") is not None:
            key = np.asarray(meta["rng"], np.uint32).reshape(state.rng.shape)
            new = new.replace(rng=jax.device_put(key, state.rng.sharding))
        if state.ema is not None:
            if EMA_ITEM in items:
                new = new.replace(ema=got[EMA_ITEM])
            else:  # EMA switched on for a run that had none: start it from the parameters
                new = new.replace(ema=jax.tree_util.tree_map(jnp.copy, new.variables["params"]))
        return new, int(meta["data_position"])
    return state, 0
