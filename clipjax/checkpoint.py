"""clipjax checkpoints: an Orbax `CheckpointManager` directory whose steps hold the model's
variables ("model") beside its config ("model_config", JSON), so a checkpoint loads with
nothing else. Training runs add their own items (optimizer state, data position, ...) to the
same steps; inference reads only these two.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from clipjax.convert.common import CheckpointError
from clipjax.models.config import CLIPConfig

MODEL_ITEM = "model"
CONFIG_ITEM = "model_config"


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def is_clipjax_checkpoint(path: str) -> bool:
    """A CheckpointManager root with at least one finished step holding a model config."""
    if not os.path.isdir(path):
        return False
    return latest_step(path) is not None


def latest_step(path: str) -> Optional[int]:
    ocp = _ocp()
    try:
        steps = ocp.CheckpointManager(os.path.abspath(path)).all_steps()
    except Exception:
        return None
    for step in sorted(steps, reverse=True):  # only finalised steps are listed by Orbax
        if os.path.isdir(os.path.join(path, str(step), CONFIG_ITEM)):
            return step
    return None


def save_clipjax(path: str, variables: dict, cfg: CLIPConfig, step: int = 0) -> None:
    """Write `variables` (params [+ batch_stats]) and the config as step `step` of `path`."""
    ocp = _ocp()
    path = os.path.abspath(path)
    with ocp.CheckpointManager(path) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{
            MODEL_ITEM: ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, variables)),
            CONFIG_ITEM: ocp.args.JsonSave(cfg.to_dict()),
        }), force=True)
        mngr.wait_until_finished()


def load_config(path: str, step: Optional[int] = None) -> CLIPConfig:
    ocp = _ocp()
    path = os.path.abspath(path)
    step = latest_step(path) if step is None else step
    if step is None:
        raise CheckpointError(f"{path} holds no finished clipjax checkpoint")
    with ocp.CheckpointManager(path) as mngr:
        d = mngr.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
    from clipjax.models.clipseg import CLIPSegConfig, is_clipseg_config

    try:
        if isinstance(d, dict) and "tagging" in d and "variant" in d:
            from clipjax.models.tag2text import Tag2TextConfig

            return Tag2TextConfig.from_dict(d)
        if is_clipseg_config(d):
            return CLIPSegConfig.from_dict(d)
        return CLIPConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} step {step}: model config is not a CLIP config: {e}") from None


def load_clipjax(path: str, step: Optional[int] = None, shardings=None) -> tuple[CLIPConfig, dict]:
    """Latest (or given) step -> (config, variables). `shardings`, a pytree of
    jax.sharding.Sharding matching the variables, restores straight onto a mesh."""
    ocp = _ocp()
    path = os.path.abspath(path)
    step = latest_step(path) if step is None else step
    cfg = load_config(path, step)
    with ocp.CheckpointManager(path) as mngr:
        if shardings is None:
            # Restore onto this process's first device whatever mesh wrote it (a checkpoint
            # of a multi-process run included); np.zeros targets would pin the saved topology.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            meta = mngr.item_metadata(step)[MODEL_ITEM]
            target = jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta,
                is_leaf=lambda m: hasattr(m, "shape"))
            restore = ocp.args.StandardRestore(target)
        else:
            restore = ocp.args.StandardRestore(shardings)
        variables = mngr.restore(step, args=ocp.args.Composite(**{MODEL_ITEM: restore}))[MODEL_ITEM]
    return cfg, dict(variables)
