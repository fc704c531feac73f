"""Which format a checkpoint path holds, and reading any of them into (model config, variables).

Formats: "clipjax" (an Orbax directory in clipjax.checkpoint_format, or a training workdir whose
checkpoints/ holds one), "hf" (a transformers CLIPModel directory), "flax" (a transformers 4.x
FlaxCLIPModel directory: flax_model.msgpack + config.json, read with flax.serialization alone), "openai" (a state-dict file
in the OpenAI / open_clip layout); `read_model` also takes a transformers CLIPSeg directory.
This is the one place formats are told apart: clipjax.load (inference) and the converters both
read through it.
"""

from __future__ import annotations

import logging
from typing import Optional

from clipjax import checkpoint_format as cf, storage
from clipjax.convert.common import hf_model_type
from clipjax.convert.flax_clip import is_flax_only_clip_dir, load_flax_clip
from clipjax.convert.hf_clip import is_hf_clip_dir, load_hf_clip
from clipjax.convert.hf_clipseg import is_hf_clipseg_dir, load_hf_clipseg
from clipjax.convert.openai_clip import load_openai
from clipjax.models.config import CLIPConfig
from clipjax.models.registry import config_from_dict
from clipjax.variables import CheckpointError, short_error

log = logging.getLogger("clipjax")


def save_clipjax(path: str, variables: dict, cfg, step: int = 0) -> None:
    """Write `variables` and the model config `cfg` as step `step` of the clipjax checkpoint `path`."""
    cf.save_model(path, variables, cfg.to_dict(), step)


def load_config(path: str, step: Optional[int] = None):
    """The model config (CLIPConfig, CLIPSegConfig or Tag2TextConfig) of a clipjax checkpoint."""
    step, d = cf.read_config_dict(path, step)
    try:
        return config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{storage.normalize(path)} step {step}: model config is not a CLIP config: {e}") from None


def load_clipjax(path: str, step: Optional[int] = None, shardings=None) -> tuple[CLIPConfig, dict]:
    """The given step, or the newest one that reads back intact (the step a training run would
    resume from: unreadable steps and steps whose checksums disagree are passed over with one
    line each) -> (config, variables). `shardings`, a pytree of jax.sharding.Sharding matching
    the variables, restores straight onto a mesh."""
    if step is not None:
        return load_config(path, step), cf.read_variables(path, step, shardings)
    steps = cf.model_steps(storage.normalize(path))
    if not steps:
        raise CheckpointError(f"{storage.normalize(path)} holds no finished clipjax checkpoint")
    reasons = []
    for s in steps:
        try:
            return load_config(path, s), cf.read_variables(path, s, shardings)
        except Exception as e:  # noqa: BLE001 - a damaged step: the one before, said in one line
            reason = str(e) if isinstance(e, CheckpointError) else short_error(e)
            log.warning("checkpoint step %d of %s cannot be read (%s); trying an older one", s, path, reason)
            reasons.append(f"step {s}: {reason}")
    raise CheckpointError(f"no step of {storage.normalize(path)} can be read:\n  " + "\n  ".join(reasons))


def detect_format(path: str) -> str:
    """"clipjax" (Orbax directory), "hf" (transformers CLIPModel directory), "flax"
    (transformers 4.x FlaxCLIPModel directory) or "openai"
    (a state-dict file in the OpenAI / open_clip layout)."""
    if not storage.exists(path):
        raise CheckpointError(f"No such checkpoint: {path}")
    if storage.is_remote(path) and storage.isdir(path):
        # Orbax reads object storage itself; other formats are read from a local copy
        return "clipjax" if _is_clipjax_dir(path) else detect_format(storage.local_copy(path))
    if storage.isdir(path):
        if is_flax_only_clip_dir(path):  # transformers 4.x FlaxCLIPModel.save_pretrained (msgpack)
            return "flax"
        if is_hf_clip_dir(path):
            return "hf"
        mt = hf_model_type(path)
        if mt is not None:
            raise CheckpointError(f"{path} is a transformers {mt!r} model directory, not a CLIP model")
        if _is_clipjax_dir(path):
            return "clipjax"
        raise CheckpointError(
            f"{path} is neither a clipjax (Orbax) checkpoint nor a transformers CLIP directory")
    return "openai"


def _is_clipjax_dir(path: str) -> bool:
    """A clipjax checkpoint, or a training workdir whose checkpoints/ holds one."""
    return cf.is_clipjax_checkpoint(path) or cf.is_clipjax_checkpoint(storage.join(path, "checkpoints"))


def read_any(path: str, arch: Optional[str] = None) -> tuple[CLIPConfig, dict]:
    """(config, variables) from any checkpoint format clipjax reads. `arch`: an open_clip model
    name for an OpenAI-layout file (whose weights cannot tell activation and heads)."""
    fmt = detect_format(path)
    if arch is not None and fmt != "openai":
        raise CheckpointError(f"arch={arch!r} is for OpenAI / open_clip state-dict files; {path} is a {fmt} "
                              "checkpoint, which records its architecture")
    if fmt == "clipjax":
        # a training workdir keeps its checkpoints under checkpoints/
        run_dir = storage.join(path, "checkpoints")
        return load_clipjax(run_dir if cf.is_clipjax_checkpoint(run_dir) else path)
    if fmt == "hf":
        return load_hf_clip(storage.local_copy(path))
    if fmt == "flax":
        return load_flax_clip(storage.local_copy(path))
    return load_openai(storage.local_copy(path), arch=arch)


def read_model(path: str, arch: Optional[str] = None):
    """`read_any`, and also a transformers CLIPSeg directory: (config, variables) of any model."""
    if storage.isdir(path) and not (storage.is_remote(path) and _is_clipjax_dir(path)):
        local = storage.local_copy(path)
        if is_hf_clipseg_dir(local):
            return load_hf_clipseg(local)
    return read_any(path, arch)
