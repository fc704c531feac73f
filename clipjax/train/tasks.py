"""What the training loop trains: a Task bundles the model, its config, example inputs for
init, the loss/gradient function, the data stream and the periodic evaluator.

The loop (clipjax/train/loop.py) is task-agnostic: mesh, sharded state, guarded step,
checkpoints, metrics and interruption handling are shared by CLIP, CLIPSeg, Tag2Text and RAM.
`config.task` picks the task ("clip" when absent).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

TASKS = ("clip", "clipseg", "tag2text")


@dataclasses.dataclass
class Task:
    name: str
    model: Any  # flax module
    cfg: Any  # model config dataclass (to_dict() is saved beside the params)
    dummy_inputs: Optional[tuple]  # example inputs for model.init; None = CLIP's (image, ids)
    # (params, other_variables, *batch, rng) -> ((loss, updates), grads)
    value_and_grad: Callable
    # (position) -> iterator of batches: tuples of global arrays, the step's *batch
    make_data: Callable[[int], Any]
    # () -> evaluate(variables) -> metrics, or None
    make_evaluator: Callable[[], Optional[Callable]]
    # (fresh sharded variables) -> variables with pretrained parts loaded; None = config.init_from
    post_init: Optional[Callable] = None


def clip_task(config, mesh, rules) -> Task:
    from clipjax.data.pipeline import make_train_data
    from clipjax.evaluation.periodic import make_periodic_evaluator
    from clipjax.models.clip import CLIP
    from clipjax.train.loop import make_value_and_grad, model_config

    cfg = model_config(config)
    model = CLIP(cfg)
    vg = make_value_and_grad(model, config.loss, config.get("loss_impl", "global"),
                             int(config.get("accum_steps", 1) or 1), mesh)
    return Task("clip", model, cfg, None, vg,
                make_data=lambda position: make_train_data(config, cfg, mesh, rules, position),
                make_evaluator=lambda: make_periodic_evaluator(config, cfg, mesh, rules))


def build_task(config, mesh, rules, workdir: Optional[str] = None) -> Task:
    name = config.get("task", "clip") or "clip"
    if name == "clip":
        return clip_task(config, mesh, rules)
    if name == "clipseg":
        from clipjax.train.clipseg_task import clipseg_task

        return clipseg_task(config, mesh, rules)
    if name == "tag2text":
        from clipjax.train.tag2text_task import tag2text_task

        return tag2text_task(config, mesh, rules, workdir)
    raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
