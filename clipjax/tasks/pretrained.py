"""Pretrained parts placed into a fresh, sharded model (config.init_from): what every task's
`post_init` is built from (LiT's locked image tower, CLIPSeg's frozen CLIP, ...)."""

from __future__ import annotations

import importlib.util
import logging
import os

from clipjax import storage
from clipjax.convert.formats import load_config, read_any
from clipjax.models.config import CLIPConfig
from clipjax.variables import CheckpointError, place_like

log = logging.getLogger("clipjax.train")


def load_pretrained_parts(variables, path: str, parts=None):
    """Replace top-level parts ("visual", "text", "logit_scale", ...) of freshly initialised,
    sharded `variables` with those of a pretrained checkpoint (any format clipjax.load reads),
    placed on the same shardings. Used by LiT (a locked, pretrained image tower)."""
    _, loaded = read_any(path)
    parts = list(parts) if parts else list(loaded["params"])
    out = {col: dict(tree) for col, tree in variables.items()}
    for col, tree in loaded.items():
        for part in parts:
            if part not in tree:
                continue
            if part not in out.get(col, {}):
                raise CheckpointError(f"init_from {path}: the model has no {col}/{part}")
            out[col][part] = place_like({part: out[col][part]}, {part: tree[part]},
                                        f"init_from {path}: {col}/{part}")[part]
    missing = [p for p in parts if not any(p in tree for tree in loaded.values())]
    if missing:
        raise CheckpointError(f"init_from {path}: checkpoint has no {missing}")
    log.info("initialised %s from %s", ", ".join(parts), path)
    return out


def load_subtree(variables, path: str, name: str, what: str):
    """`variables` with params[name] replaced by the whole model at `path` (its params), on
    the shardings already there: a pretrained CLIP under another model (CLIPSeg's "clip")."""
    _, loaded = read_any(path)
    placed = place_like({name: variables["params"][name]}, {name: loaded["params"]}, what)
    return {**variables, "params": {**variables["params"], name: placed[name]}}


def clip_architecture(ref: str, what: str) -> CLIPConfig:
    """The CLIPConfig of a pretrained CLIP without its weights, for plans (plan.py compiles a
    step, nothing is loaded): a clipjax checkpoint's stored config, the config of any other
    format clipjax.load reads, or — to plan over a CLIP that is not trained yet — a CLIP
    training config file (`configs/clip_vit_b16.py`: the CLIP its config.model describes)."""
    if ref.endswith(".py") and os.path.isfile(ref):
        spec = importlib.util.spec_from_file_location("_planned_clip_config", ref)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return CLIPConfig.from_dict(module.get_config().model.to_dict())
    if not ref or not storage.exists(ref):
        raise ValueError(f"{what}={ref!r} does not exist: give the CLIP checkpoint, or, to plan over a CLIP not "
                         f"trained yet, its training config (--config.{what}=configs/clip_vit_b16.py)")
    run_dir = storage.join(ref, "checkpoints")
    try:
        cfg = load_config(run_dir if storage.isdir(run_dir) else ref)
    except Exception:  # noqa: BLE001 - not a clipjax checkpoint: whatever format it is
        cfg = read_any(ref)[0]
    if not isinstance(cfg, CLIPConfig):
        raise CheckpointError(f"{what}={ref} is a {type(cfg).__name__} checkpoint, not a CLIP")
    return cfg
