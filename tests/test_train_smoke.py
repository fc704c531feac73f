"""train.py end to end on the built-in procedural data, and loading its workdir."""

import json
import os

import numpy as np

import clipjax


# A small clipjax_shapes variant (built in ~1 s into the session's TFDS dir, see conftest).
TINY_SHAPES = dict(image_size=32, num_train=256, num_validation=64, num_test=64)
TINY_SHAPES_ARGS = [f"--config.data.shapes.{k}={v}" for k, v in TINY_SHAPES.items()]


def _config(total_steps=6):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.total_steps = total_steps
    c.data.shapes.update(TINY_SHAPES)
    c.batch_size = 16
    c.log_every = 2
    c.eval_every = 6
    c.eval_examples = 64
    c.checkpoint_every = 3
    c.optimizer.warmup_steps = 2
    return c


def test_train_runs_checkpoints_and_loads(tmp_path):
    from clipjax.tasks import train

    wd = str(tmp_path / "run")
    final = train(_config(), wd)
    assert np.isfinite(final["loss"]) and 0.0 <= final["zeroshot_top1"] <= 1.0
    lines = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6]
    clip = clipjax.load(wd)  # a training workdir loads for inference (latest step)
    assert clip.encode_text(["a red circle"]).shape == (1, 32)


def test_evaluate_cli_on_a_run(tmp_path):
    import subprocess
    import sys

    from clipjax.tasks import train

    wd = str(tmp_path / "run")
    c = _config(4)
    c.eval_every = 0
    train(c, wd)
    root = os.path.join(os.path.dirname(__file__), "..")
    out = str(tmp_path / "results.json")
    r = subprocess.run([sys.executable, os.path.join(root, "evaluate.py"), "--checkpoint", wd, "--examples", "48",
                        "--builder-kwargs", json.dumps(TINY_SHAPES), "--output", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.load(open(out))
    assert 0 <= res["top1"] <= res["top5"] <= 1 and "mean_per_class_recall" in res and "heldout_top1" in res
    assert res["settings"]["num_classes"] == 30 and os.path.exists(str(tmp_path / "results_confusion.png"))
    r = subprocess.run([sys.executable, os.path.join(root, "evaluate.py"), "--checkpoint", wd, "--dataset", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown dataset" in r.stderr and "Traceback" not in r.stderr
