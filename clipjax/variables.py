"""Variable trees as flat "/"-joined paths, the error every checkpoint reader raises, and
placing loaded (host) arrays onto the shardings of freshly initialised, sharded variables.

This module sits below every other room: models, converters, training and inference all
use it, and it imports nothing of clipjax but its errors."""

from __future__ import annotations

import jax
import numpy as np


from clipjax.errors import CheckpointError  # noqa: F401  (its historical home; raised by every reader)


def short_error(e: BaseException) -> str:
    """One line of an exception: TensorStore's errors carry a long JSON spec after the reason."""
    text = " ".join(str(e).split())
    for cut in (" [source locations=", " tensorstore_spec=", ' {"'):
        if cut in text:
            text = text.split(cut)[0]
    if len(text) > 320:  # paths make these long; the reason is at the end (e.g. "No space left on device")
        text = f"{text[:150]} ... {text[-160:]}"
    return f"{type(e).__name__}: {text}"


def flatten_variables(tree, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten_variables(v, path))
        else:
            out[path] = v
    return out


def unflatten_variables(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def shape_mismatches(mine: dict, theirs: dict) -> list[str]:
    """'key: model (..) vs checkpoint (..)' for every key of `theirs` that `mine` (flat
    trees) lacks or holds with another shape."""
    return [f"{k}: model {tuple(np.shape(mine.get(k)))} vs checkpoint {tuple(np.shape(v))}"
            for k, v in theirs.items() if k not in mine or np.shape(mine[k]) != np.shape(v)]


def place_like(like, loaded, what: str):
    """`loaded` (a tree of host arrays) placed on the shardings and dtypes of `like` (a tree of
    jax arrays, or ShapeDtypeStructs with shardings), after checking that both have the same
    keys and shapes; `what` names the source in the CheckpointError otherwise."""
    mine, theirs = flatten_variables(like), flatten_variables(loaded)
    bad = shape_mismatches(mine, theirs)
    missing = sorted(set(mine) - set(theirs))
    if bad or missing:
        detail = bad[:8] + [f"{k}: missing from the checkpoint" for k in missing[:8]]
        raise CheckpointError(f"{what} does not fit: " + "; ".join(detail))
    return unflatten_variables(
        {k: jax.device_put(np.asarray(theirs[k], mine[k].dtype), mine[k].sharding) for k in mine})
