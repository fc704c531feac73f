"""The training tasks, one module per family, picked by name (config.task, "clip" when absent).

A family module defines `make_task(config, mesh, rules, workdir) -> Task` (clipjax.tasks.base)
and, optionally, `config_problems(config) -> list[str]` naming what is wrong with its own keys.
Adding a family means adding its module here and its name to TASKS; the trainer does not change.
"""

from __future__ import annotations

import importlib

from clipjax.errors import ConfigError
from clipjax.train import loop

TASKS = ("clip", "clipseg", "tag2text", "finetune")


def task_module(config):
    name = config.get("task", "clip") or "clip"
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return importlib.import_module(f"clipjax.tasks.{name}")


def validate_config(config) -> None:
    """Every check of a training config that can run before training starts (the loop's
    generic keys and the task's own): ValueError with one line per problem."""
    loop.check_config(config, getattr(task_module(config), "config_problems", None))


def train(config, workdir: str, devices=None, fresh_start: bool = False) -> dict:
    """Train (or resume) the task config.task names in `workdir`; the final metrics.
    `fresh_start`: see clipjax.train.loop.train."""
    module = task_module(config)
    return loop.train(config, workdir, module.make_task, devices, getattr(module, "config_problems", None),
                      fresh_start)
