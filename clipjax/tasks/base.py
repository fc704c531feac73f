"""What the training loop trains: a Task bundles the model, its config, example inputs for
init, the loss/gradient function, the data stream and the periodic evaluator.

The loop (clipjax/train/loop.py) is task-agnostic: mesh, sharded state, guarded step,
checkpoints, metrics and interruption handling are shared by CLIP, CLIPSeg, Tag2Text and RAM.
Each family's module in clipjax/tasks/ builds its Task with `make_task(config, mesh, rules,
workdir)`; clipjax.tasks picks the module by config.task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional


@dataclasses.dataclass
class Task:
    name: str
    model: Any  # flax module
    cfg: Any  # model config dataclass (to_dict() is saved beside the params)
    dummy_inputs: tuple  # example inputs for model.init
    # (params, other_variables, *batch, rng) -> ((loss, updates), grads)
    value_and_grad: Callable
    # (position[, data_state]) -> iterator of batches: tuples of global arrays, the step's *batch;
    # data_state (a JSON-able dict) only for streams with a `state()` of their own (shard streams)
    make_data: Callable[[int], Any]
    # () -> evaluate(variables) -> metrics, or None
    make_evaluator: Callable[[], Optional[Callable]]
    # (fresh sharded variables) -> variables with pretrained parts loaded, or None
    post_init: Optional[Callable] = None
    # (global batch size) -> ((shape, dtype), ...): the layout of the step's *batch, what make_data
    # yields (tests/test_task_batch_specs.py checks it against a real batch); plan.py compiles
    # the step for these shapes without any data
    batch_spec: Optional[Callable[[int], tuple]] = None
