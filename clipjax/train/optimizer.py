"""optax AdamW with warm-up + cosine, a weight-decay mask, global-norm clipping and freezing
by parameter-path patterns (LiT: a locked image tower)."""

from __future__ import annotations

import re
from typing import Sequence

import jax
import optax

# No decay on biases, norms, embeddings, class/position tokens, logit scale/bias (CLIP / open_clip).
NO_DECAY_PATTERNS = (r"bias$", r"scale$", r"/ln[^/]*/", r"norm", r"embed", r"/cls$", r"logit_")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(params, patterns: Sequence[str], match_value: bool) -> object:
    """A pytree of bools: `match_value` where the '/'-joined path matches any regex."""
    regs = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda p, _: match_value if any(r.search(_path_str(p)) for r in regs) else (not match_value), params)


def make_schedule(lr: float, warmup_steps: int, total_steps: int, end_factor: float = 0.0):
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * end_factor)


def make_optimizer(opt_cfg, total_steps: int, params) -> tuple[optax.GradientTransformation, object]:
    """-> (transformation, schedule). opt_cfg: lr, warmup_steps, weight_decay, b1, b2, eps,
    grad_clip_norm, freeze (list of regexes over parameter paths)."""
    schedule = make_schedule(opt_cfg.lr, opt_cfg.warmup_steps, total_steps)
    decay_mask = path_mask(params, NO_DECAY_PATTERNS, match_value=False)
    tx = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                     weight_decay=opt_cfg.weight_decay, mask=decay_mask)
    chain = []
    if opt_cfg.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
    chain.append(tx)
    tx = optax.chain(*chain)
    freeze = list(opt_cfg.get("freeze", []) or [])
    if freeze:
        labels = jax.tree_util.tree_map(lambda frozen: "frozen" if frozen else "train",
                                        path_mask(params, freeze, match_value=True))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
