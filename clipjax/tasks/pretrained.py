"""Pretrained parts placed into a fresh, sharded model (config.init_from): what every task's
`post_init` is built from (LiT's locked image tower, CLIPSeg's frozen CLIP, ...)."""

from __future__ import annotations

import logging

from clipjax.convert.formats import read_any
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
