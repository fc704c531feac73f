"""The clipjax checkpoint format: an Orbax `CheckpointManager` directory whose steps hold the
model's variables ("model") beside its config ("model_config", JSON: `cfg.to_dict()`, whose
"model_type" names the family), so a checkpoint loads with nothing else. Training runs add
their own items (optimizer state, data position, ...) to the same steps; inference reads only
these two.

This module reads and writes the items as plain dicts and arrays; turning the config dict into
a model config is clipjax.convert.formats' (through clipjax.models.registry).
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from clipjax import storage
from clipjax.checksums import host_tree_checksums, mismatches
from clipjax.variables import CheckpointError

MODEL_ITEM = "model"
CONFIG_ITEM = "model_config"
CHECKSUM_ITEM = "checksums"  # {item: {leaf path: [plain, weighted]}}, written by training (clipjax.checksums)


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def is_clipjax_checkpoint(path: str) -> bool:
    """A CheckpointManager root with at least one finished step holding a model config."""
    if not storage.isdir(path):
        return False
    return latest_step(path) is not None


def model_steps(path: str) -> list[int]:
    """Finished steps holding a model config, newest first (what clipjax.load may read)."""
    ocp = _ocp()
    try:
        steps = ocp.CheckpointManager(storage.normalize(path)).all_steps()
    except Exception:
        return []
    # only finalised steps are listed by Orbax
    return [s for s in sorted(steps, reverse=True) if storage.isdir(storage.join(path, str(s), CONFIG_ITEM))]


def latest_step(path: str) -> Optional[int]:
    steps = model_steps(path)
    return steps[0] if steps else None


def array_metadata(path: str, step: int, item: str = MODEL_ITEM):
    """The stored tree of array metadata (shape, dtype, ...) of `item` at `step`, read from the
    item's own files (a bare CheckpointManager knows no handler for it and answers None). The
    item handler is asked directly: StandardCheckpointer also looks for a step-level metadata
    file inside the item and logs a warning on every load when it is not there."""
    ocp = _ocp()
    meta = ocp.PyTreeCheckpointHandler().metadata(storage.epath(storage.join(storage.normalize(path), str(step), item)))
    return getattr(meta, "tree", meta)


def save_model(path: str, variables: dict, config_dict: dict, step: int = 0) -> None:
    """Write `variables` (params [+ batch_stats, constants]) and the config dict as step `step`."""
    ocp = _ocp()
    storage.check_checkpoint_location(path)
    path = storage.normalize(path)
    with ocp.CheckpointManager(path) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{
            MODEL_ITEM: ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, variables)),
            CONFIG_ITEM: ocp.args.JsonSave(config_dict),
        }), force=True)
        mngr.wait_until_finished()


def read_config_dict(path: str, step: Optional[int] = None) -> tuple[int, dict]:
    """(step, stored config dict) of the latest (or given) step."""
    ocp = _ocp()
    path = storage.normalize(path)
    step = latest_step(path) if step is None else step
    if step is None:
        raise CheckpointError(f"{path} holds no finished clipjax checkpoint")
    with ocp.CheckpointManager(path) as mngr:
        d = mngr.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
    return step, d


def read_variables(path: str, step: int, shardings=None) -> dict:
    """The variables of `step`. `shardings`, a pytree of jax.sharding.Sharding matching the
    variables, restores straight onto a mesh."""
    ocp = _ocp()
    path = storage.normalize(path)
    with ocp.CheckpointManager(path) as mngr:
        if shardings is None:
            # Restore onto this process's first device whatever mesh wrote it (a checkpoint
            # of a multi-process run included); np.zeros targets would pin the saved topology.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            meta = array_metadata(path, step)
            target = jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta,
                is_leaf=lambda m: hasattr(m, "shape"))
            restore = ocp.args.StandardRestore(target)
        else:
            restore = ocp.args.StandardRestore(shardings)
        items = {MODEL_ITEM: restore}
        if storage.isdir(storage.join(path, str(step), CHECKSUM_ITEM)):
            items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
        got = mngr.restore(step, args=ocp.args.Composite(**items))
    variables = dict(got[MODEL_ITEM])
    if CHECKSUM_ITEM in items:  # written by training; a converted checkpoint has none
        stored = got[CHECKSUM_ITEM].get(MODEL_ITEM, {})
        bad = mismatches(stored, host_tree_checksums(jax.device_get(variables)))
        if bad:
            raise CheckpointError(f"{path} step {step}: checksums differ (corrupted data) in {len(bad)} arrays: "
                                  + ", ".join(bad[:6]))
    return variables
