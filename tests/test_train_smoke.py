"""train.py end to end on the built-in procedural data, and loading its workdir."""

import json
import os

import numpy as np

import clipjax


def _config(total_steps=6):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.total_steps = total_steps
    c.batch_size = 16
    c.log_every = 2
    c.eval_every = 6
    c.eval_examples = 64
    c.checkpoint_every = 3
    c.optimizer.warmup_steps = 2
    return c


def test_train_runs_checkpoints_and_loads(tmp_path):
    from clipjax.train.loop import train

    wd = str(tmp_path / "run")
    final = train(_config(), wd)
    assert np.isfinite(final["loss"]) and 0.0 <= final["zeroshot_top1"] <= 1.0
    lines = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6]
    clip = clipjax.load(wd)  # a training workdir loads for inference (latest step)
    assert clip.encode_text(["a red circle"]).shape == (1, 32)
