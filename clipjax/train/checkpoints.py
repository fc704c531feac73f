"""Training checkpoints: Orbax steps under WORKDIR/checkpoints in the clipjax format.

Items of a step: "model" (variables) and "model_config" (what `clipjax.load` reads),
"opt_state", "ema" (when config.ema_decay > 0), "train_state" (JSON: step, data position,
the PRNG key), "train_config" and "checksums" (JSON: two uint32 sums of every array of the
state, computed on the devices at save time, see clipjax.checksums). Saves are asynchronous;
Orbax writes a step into a `<step>.orbax-checkpoint-tmp` directory and renames it when
complete, and restore also requires the commit timestamp in `_CHECKPOINT_METADATA`, so a
half-written step is never restored. Restoring into ShapeDtypeStructs carrying the current
mesh's shardings re-shards a checkpoint written on any other mesh.

Saved work is never deleted by a failure to read it: a step that cannot be restored (damaged
files, checksums that disagree, shapes of another config) is moved to
`checkpoints/unrestorable/<step>` with the reason beside it when an older step restores, and
when none restores, training stops with every step's reason unless the user asked for a fresh
start (which moves them aside the same way).
"""

from __future__ import annotations

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import storage
from clipjax.checkpoint_format import CHECKSUM_ITEM, CONFIG_ITEM, MODEL_ITEM, array_metadata
from clipjax.checksums import mismatches, tree_checksums
from clipjax.variables import CheckpointError, flatten_variables, short_error

log = logging.getLogger("clipjax.train")

EMA_ITEM = "ema"
OPT_ITEM = "opt_state"
TRAIN_STATE_ITEM = "train_state"
TRAIN_CONFIG_ITEM = "train_config"
UNRESTORABLE_DIR = "unrestorable"


def checkpoint_dir(workdir: str) -> str:
    return storage.join(storage.normalize(workdir), "checkpoints")


def checkpoint_manager(workdir: str, config):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             enable_async_checkpointing=True))


# On gs:// Orbax does not rename a temporary directory (objects cannot be renamed): it writes
# the step under its final name and marks it finished with this object, *after* the metadata's
# commit timestamp (orbax/checkpoint/_src/path/atomicity.py, CommitFileTemporaryPath).
ORBAX_COMMIT_FILE = "commit_success.txt"


def is_committed(step_dir: str) -> bool:
    """A step directory Orbax finished: final name, a commit timestamp in its metadata and, on
    gs://, Orbax's commit object (a process killed between the two leaves a step Orbax skips)."""
    meta = storage.join(step_dir, "_CHECKPOINT_METADATA")
    if storage.scheme(step_dir) == "gs" and not storage.exists(storage.join(step_dir, ORBAX_COMMIT_FILE)):
        return False
    try:
        return json.loads(storage.read_text(meta)).get("commit_timestamp_nsecs") is not None
    except (OSError, ValueError):  # StorageError is a ValueError
        return False


def committed_steps(mngr) -> list[int]:
    """Finished steps, newest first (Orbax already skips *.orbax-checkpoint-tmp dirs)."""
    root = str(mngr.directory)
    return [s for s in sorted(mngr.all_steps(), reverse=True) if is_committed(storage.join(root, str(s)))]


def _state_items(state) -> dict:
    items = {MODEL_ITEM: state.variables, OPT_ITEM: state.opt_state}
    if state.ema is not None:
        items[EMA_ITEM] = state.ema
    return items


def state_checksums(state) -> dict:
    """{item: {leaf path: [plain, weighted]}} of the state's arrays, on the devices."""
    return {name: tree_checksums(tree) for name, tree in _state_items(state).items()}


def save(mngr, state, cfg, config, data_position: int, data_states: list | None = None) -> int:
    """Queue an async save of `state` as step state.step; returns the step. `data_states`:
    each process's position in its own input stream (shard streams), in process order."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    items = {
        MODEL_ITEM: ocp.args.StandardSave(state.variables),
        CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
        OPT_ITEM: ocp.args.StandardSave(state.opt_state),
        TRAIN_STATE_ITEM: ocp.args.JsonSave({
            "step": step, "data_position": int(data_position), "data_states": data_states,
            "rng": [int(x) for x in np.asarray(jax.device_get(_replicated_host(state.rng))).ravel()]}),
        TRAIN_CONFIG_ITEM: ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        CHECKSUM_ITEM: ocp.args.JsonSave(state_checksums(state)),
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


def shape_problems(mngr, step: int, state) -> list[str]:
    """Keys whose stored shape differs from the model's (or that only one side has): the
    checkpoint was written with another config."""
    try:
        meta = array_metadata(str(mngr.directory), step)
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore itself will say why
        return []
    if meta is None:
        return []
    stored = {k: tuple(getattr(v, "shape", ())) for k, v in flatten_variables(meta).items()}
    mine = {k: tuple(np.shape(v)) for k, v in flatten_variables(state.variables).items()}
    out = [f"{k}: checkpoint {stored[k]} vs model {mine[k]}" for k in sorted(set(stored) & set(mine))
           if stored[k] != mine[k]]
    out += [f"{k}: only in the checkpoint" for k in sorted(set(stored) - set(mine))]
    out += [f"{k}: not in the checkpoint" for k in sorted(set(mine) - set(stored))]
    return out


def _restore_step(mngr, step: int, state):
    """(restored state, Resume) of `step`, or raises CheckpointError saying why not."""
    import orbax.checkpoint as ocp

    bad = shape_problems(mngr, step, state)
    if bad:
        raise CheckpointError("written with another model config: " + "; ".join(bad))
    items = {
        MODEL_ITEM: ocp.args.StandardRestore(_target(state.variables)),
        OPT_ITEM: ocp.args.StandardRestore(_target(state.opt_state)),
        TRAIN_STATE_ITEM: ocp.args.JsonRestore(),
    }
    root = storage.join(str(mngr.directory), str(step))
    has_ema = storage.isdir(storage.join(root, EMA_ITEM))
    if state.ema is not None and has_ema:
        items[EMA_ITEM] = ocp.args.StandardRestore(_target(state.ema))
    if storage.isdir(storage.join(root, CHECKSUM_ITEM)):
        items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
    try:
        got = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - a damaged step, said in one line
        raise CheckpointError(f"unreadable ({short_error(e)})") from None
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
    if CHECKSUM_ITEM in items:  # older checkpoints have none
        stored, now = got[CHECKSUM_ITEM], state_checksums(new)
        bad = [f"{item}{path}" for item in stored if item in now for path in mismatches(stored[item], now[item])]
        if bad:
            raise CheckpointError(f"checksums differ (corrupted data) in {len(bad)} arrays: " + ", ".join(bad[:6]))
    return new, Resume(int(meta["data_position"]), meta.get("data_states"))


class Resume:
    """Where the input stream of a restored run continues: the global position (examples
    handed out) and, for streams whose processes read their own shards, each process's state."""

    def __init__(self, position: int = 0, data_states: list | None = None):
        self.position = int(position)
        self.data_states = data_states

    def data_state(self):
        """This process's saved stream state, or None (none saved, or saved by another number
        of processes: the stream then starts its epoch again, said in one line)."""
        if not self.data_states:
            return None
        if len(self.data_states) != jax.process_count():
            log.warning("the checkpoint's input position was saved by %d processes and this run has %d: each "
                        "process's shard stream starts a new pass over its shards (examples may repeat or be "
                        "skipped once; parameters and optimizer are restored exactly)",
                        len(self.data_states), jax.process_count())
            return None
        return self.data_states[jax.process_index()]


def move_aside(mngr, step: int, reason: str) -> str:
    """Rename step `step` to checkpoints/unrestorable/<step>[-k] with the reason in a text file
    beside it (process 0; the others wait). Nothing is deleted; Orbax no longer sees the step."""
    root = str(mngr.directory)
    dest = storage.join(root, UNRESTORABLE_DIR, str(step))
    if jax.process_index() == 0:
        storage.makedirs(storage.dirname(dest))
        k = 1
        while storage.exists(dest):
            dest = storage.join(root, UNRESTORABLE_DIR, f"{step}-{k}")
            k += 1
        # the reason first: on an object store the move is a copy, then a removal of the source
        storage.write_text(dest + ".reason.txt",
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {step} could not be restored: {reason}\n")
        storage.move(storage.join(root, str(step)), dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"clipjax moved step {step} aside")
    mngr.reload()
    return dest


def restore(mngr, state, fresh_start: bool = False):
    """Restore the newest committed step that reads back intact onto `state`'s shardings (any
    mesh) -> (state, Resume). Newer steps that fail are moved aside (kept, named, with
    their reason). When steps exist but none restores: CheckpointError naming each step and
    why, unless `fresh_start`, which moves them all aside and starts from `state`."""
    steps = committed_steps(mngr)
    skipped = sorted(set(mngr.all_steps()) - set(steps))
    if skipped:
        log.warning("ignoring unfinished checkpoint steps %s", skipped)
    failed = []
    for step in steps:
        try:
            new, resume = _restore_step(mngr, step, state)
        except CheckpointError as e:
            log.warning("checkpoint step %d cannot be restored: %s", step, e)
            failed.append((step, str(e)))
            continue
        for bad, reason in failed:  # before training past them: never overwritten, never repeated
            log.warning("moved unrestorable step %d to %s", bad, move_aside(mngr, bad, reason))
        return new, resume
    if failed and not fresh_start:
        lines = "\n".join(f"  step {s}: {r}" for s, r in failed)
        raise CheckpointError(
            f"no checkpoint in {mngr.directory} can be restored, so nothing was trained or written:\n{lines}\n"
            "Resume with the config that wrote them, or start this workdir from scratch with --fresh_start "
            f"(the steps are kept, moved to {storage.join(str(mngr.directory), UNRESTORABLE_DIR)}), or use "
            "another --workdir.")
    for bad, reason in failed:
        log.warning("fresh start: moved step %d to %s", bad, move_aside(mngr, bad, reason))
    return state, Resume()


def save_failure(mngr, error: BaseException) -> CheckpointError:
    """One line for an asynchronous save that failed (a full disk, lost permissions, ...):
    what failed, and the step a re-run resumes from."""
    steps = committed_steps(mngr)
    where = f"a re-run resumes from step {steps[0]}" if steps else "no checkpoint was saved: a re-run starts from scratch"
    return CheckpointError(f"writing a checkpoint under {mngr.directory} failed ({short_error(error)}); "
                           f"training stopped there; {where}")


def raise_save_errors(mngr) -> None:
    """Raise (once, as one CheckpointError) the error of an asynchronous save that has failed
    since the last call: checked after every step, so a failing save is reported where it
    fails, not at the next save."""
    try:
        mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001 - whatever the storage raised, said in one line
        raise save_failure(mngr, e) from None


def close_manager(mngr) -> CheckpointError | None:
    """Finish the queued saves and close the manager; the save error, if one happened (the
    caller raises it unless another error is already on its way)."""
    failure = None
    try:
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        failure = save_failure(mngr, e)
    try:
        mngr.close()
    except Exception as e:  # noqa: BLE001 - the same failure, surfacing again
        failure = failure or save_failure(mngr, e)
    return failure


def resume_point(mngr) -> str:
    """Which checkpoint a re-run of this workdir would start from, in words."""
    mngr.wait_until_finished()
    steps = committed_steps(mngr)
    if not steps:
        return f"no checkpoint is saved in {mngr.directory}: a re-run starts from scratch"
    return f"a re-run resumes from step {steps[0]} in {mngr.directory}"
