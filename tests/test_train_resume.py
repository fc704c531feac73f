"""Fault tolerance of `python train.py`: SIGKILL + resume is bitwise identical to an
uninterrupted run (half-written checkpoint steps are skipped), SIGTERM saves and exits 0, a
NaN loss stops with a message and leaves the last good checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clipjax.convert.formats import load_clipjax
from clipjax.train.checkpoints import is_committed
from test_train_smoke import TINY_SHAPES, TINY_SHAPES_ARGS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOTAL = 16
EVERY = 4


def _env(extra=None):
    """The environment of a train.py subprocess: 2 host devices, no inherited multi-process
    settings; `extra` (e.g. an object-storage emulator's variables) on top."""
    env = dict(os.environ)
    env.update(extra or {})
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    for k in ("CLIPJAX_COORDINATOR", "CLIPJAX_NUM_PROCESSES", "CLIPJAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _launch(workdir, *extra, total=TOTAL):
    cmd = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
           f"--config.total_steps={total}", "--config.batch_size=16", "--config.log_every=1",
           "--config.eval_every=0", f"--config.checkpoint_every={EVERY}", "--config.keep_checkpoints=2",
           "--config.optimizer.warmup_steps=2", "--config.tensorboard=False", *TINY_SHAPES_ARGS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _committed(workdir):
    root = os.path.join(str(workdir), "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(d) for d in os.listdir(root) if d.isdigit() and is_committed(os.path.join(root, d)))


def _metrics(workdir):
    path = os.path.join(str(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def _wait_until(pred, proc, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _params(workdir):
    _, variables = load_clipjax(os.path.join(str(workdir), "checkpoints"))
    return variables


def _assert_bitwise_equal(a, b):
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (and, alongside it, a run that goes NaN)."""
    from clipjax.data.shapes_dataset import build_shapes

    build_shapes(None, **TINY_SHAPES)  # once, here: the two runs below would race to prepare it
    ref = tmp_path_factory.mktemp("ref")
    nan = tmp_path_factory.mktemp("nan")
    p_ref = _launch(ref)
    p_nan = _launch(nan, "--config.optimizer.lr=1e30", "--config.checkpoint_every=1", total=12)
    rc, out = _finish(p_ref)
    assert rc == 0, out
    return ref, _params(ref), (p_nan, nan)


def test_sigkill_then_resume_is_bitwise_identical(reference, tmp_path):
    ref_dir, ref_params, _ = reference
    run = tmp_path / "run"
    proc = _launch(run)
    # kill at some step after the first checkpoint is complete (and past it, mid-interval)
    ok = _wait_until(lambda: _committed(run) and any(m.get("step", 0) >= EVERY + 2 for m in _metrics(run)), proc)
    assert ok and proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = max(m["step"] for m in _metrics(run) if "loss" in m)
    assert EVERY < done < TOTAL
    assert _committed(run) and max(_committed(run)) < TOTAL

    # half-written steps newer than any real one must be ignored
    root = run / "checkpoints"
    (root / f"{TOTAL + 100}.orbax-checkpoint-tmp-1").mkdir()
    (root / f"{TOTAL + 100}.orbax-checkpoint-tmp-1" / "junk").write_text("x")
    (root / f"{TOTAL + 101}" / "model").mkdir(parents=True)
    (root / f"{TOTAL + 101}" / "_CHECKPOINT_METADATA").write_text(json.dumps({"commit_timestamp_nsecs": None}))

    rc, out = _finish(_launch(run))
    assert rc == 0, out
    assert "resumed from step" in out
    _assert_bitwise_equal(_params(run), ref_params)
    losses = {m["step"]: m["loss"] for m in _metrics(run) if "loss" in m}  # latest value per step
    ref_losses = {m["step"]: m["loss"] for m in _metrics(ref_dir) if "loss" in m}
    assert losses == ref_losses
    # the reference run's metrics carry throughput and MFU, and it drew its loss curve
    logged = [m for m in _metrics(ref_dir) if "loss" in m]
    assert all(m["mfu"] > 0 and m["images_per_s"] > 0 and m["step_time_s"] > 0 for m in logged)
    assert any(m.get("flops_per_step", 0) > 0 for m in _metrics(ref_dir))
    assert os.path.getsize(ref_dir / "loss_curve.png") > 1000


def test_sigterm_saves_and_exits_cleanly(reference, tmp_path):
    run = tmp_path / "run"
    proc = _launch(run)
    ok = _wait_until(lambda: _committed(run) and any(m.get("step", 0) >= EVERY + 1 for m in _metrics(run)), proc)
    assert ok and proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 0, out
    stopped = [m for m in _metrics(run) if m.get("event") == "interrupted"]
    assert len(stopped) == 1, out
    step = stopped[0]["step"]
    assert step < TOTAL
    assert max(_committed(run)) == step  # a checkpoint at exactly the step reached
    assert "stopped at step" in out


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(reference):
    _, _, (proc, nan_dir) = reference
    rc, out = _finish(proc)
    assert rc == 1, out
    assert "not finite" in out and "last good checkpoint" in out, out
    events = [m for m in _metrics(nan_dir) if m.get("event") == "nonfinite"]
    assert len(events) == 1
    bad = int(out.split("at step ")[1].split(":")[0])
    steps = _committed(nan_dir)
    assert steps and max(steps) == bad - 1  # every step before the bad one was saved, not the bad one
    _, variables = load_clipjax(os.path.join(str(nan_dir), "checkpoints"))
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(variables))
