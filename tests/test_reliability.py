"""A run's saved work survives what a user or a machine does to it: a changed config or
checkpoints that no longer read stop the trainer with every step's reason instead of
training from scratch over them; a damaged newest step is detected (checksums), passed over
and kept aside; nothing is deleted; re-running a finished run says so."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import clipjax
from clipjax.convert.formats import load_clipjax
from clipjax.tasks import train
from clipjax.variables import CheckpointError
from test_train_smoke import TINY_SHAPES_ARGS, _config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _cfg(total=6, every=3):
    c = _config(total_steps=total)
    c.eval_every = 0
    c.checkpoint_every = every
    c.keep_checkpoints = 3
    c.tensorboard = False
    return c


def _steps(wd):
    root = os.path.join(wd, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def _files(wd):
    """Every file of the checkpoints (path -> bytes), to show nothing was written or deleted."""
    out = {}
    for path in glob.glob(os.path.join(wd, "checkpoints", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, wd)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6."""
    wd = str(tmp_path_factory.mktemp("finished") / "run")
    train(_cfg(), wd)
    assert _steps(wd) == [3, 6]
    return wd


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_a_changed_config_stops_with_the_shapes_and_writes_nothing(finished, tmp_path):
    wd = _copy(finished, tmp_path / "run")
    before = _files(wd)
    c = _cfg(total=9)
    c.model.embed_dim = 48
    with pytest.raises(CheckpointError) as e:
        train(c, wd)
    msg = str(e.value)
    assert "step 6:" in msg and "step 3:" in msg and "another model config" in msg
    assert "(32,)" in msg or "32" in msg and "48" in msg
    assert "--fresh_start" in msg
    assert _files(wd) == before  # nothing written, nothing deleted


def test_fresh_start_moves_the_old_steps_aside_and_trains(finished, tmp_path):
    wd = _copy(finished, tmp_path / "run")
    c = _cfg(total=3)
    c.model.embed_dim = 48
    final = train(c, wd, fresh_start=True)
    assert final["step"] == 3 and _steps(wd) == [3]
    kept = sorted(os.listdir(os.path.join(wd, "checkpoints", "unrestorable")))
    assert kept == ["3", "3.reason.txt", "6", "6.reason.txt"]
    assert "another model config" in open(os.path.join(wd, "checkpoints", "unrestorable", "6.reason.txt")).read()


def _flip_a_bit_in_the_params(step_dir):
    """Flip one bit of the largest data file of the step's model item (the parameter bytes)."""
    files = [p for p in glob.glob(os.path.join(step_dir, "model", "**", "*"), recursive=True)
             if os.path.isfile(p) and "/d/" in p]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x10
        f.seek(0)
        f.write(data)


def _break_the_checksum(step_dir):
    """Change one stored checksum: what a silently altered array looks like to the reader."""
    import json

    path = os.path.join(step_dir, "checksums", "metadata")
    d = json.load(open(path))
    key = sorted(d["model"])[0]
    d["model"][key][0] = (d["model"][key][0] + 1) % 2**32
    json.dump(d, open(path, "w"))


@pytest.mark.parametrize("damage", [_break_the_checksum, _flip_a_bit_in_the_params])
def test_a_damaged_newest_step_is_passed_over_kept_and_not_repeated(finished, tmp_path, damage):
    wd = _copy(finished, tmp_path / "run")
    damage(os.path.join(wd, "checkpoints", "6"))
    # inference picks the step the trainer would: the intact step 3
    cfg, variables = load_clipjax(os.path.join(wd, "checkpoints"))
    _, good = load_clipjax(os.path.join(finished, "checkpoints"), step=3)
    np.testing.assert_array_equal(np.asarray(variables["params"]["logit_scale"]),
                                  np.asarray(good["params"]["logit_scale"]))
    assert clipjax.load(wd).encode_text(["a red circle"]).shape == (1, 32)
    # training resumes from 3, moves 6 aside before writing its own step 6, and finishes
    final = train(_cfg(total=9), wd)
    assert final["step"] == 9 and _steps(wd) == [3, 6, 9]
    aside = os.path.join(wd, "checkpoints", "unrestorable")
    assert sorted(os.listdir(aside)) == ["6", "6.reason.txt"]
    reason = open(os.path.join(aside, "6.reason.txt")).read()
    assert "checksums differ" in reason or "unreadable" in reason


def test_nothing_restores_load_raises_one_clear_error(finished, tmp_path):
    wd = _copy(finished, tmp_path / "run")
    for step in (3, 6):
        _break_the_checksum(os.path.join(wd, "checkpoints", str(step)))
    with pytest.raises(CheckpointError, match="no step of .* can be read") as e:
        clipjax.load(wd)
    assert "step 6: " in str(e.value) and "step 3: " in str(e.value) and "checksums differ" in str(e.value)


def test_keep_checkpoints_below_one_is_refused(tmp_path):
    c = _cfg()
    c.keep_checkpoints = 0
    with pytest.raises(ValueError, match="keep_checkpoints must be an integer >= 1"):
        train(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_rerunning_a_finished_run_says_so(finished):
    assert train(_cfg(), finished) == {"step": 6, "finished": True}


def _cli(*args):
    return subprocess.run([sys.executable, "train.py", "--config", "configs/default.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_mistakes_get_one_line(finished, tmp_path):
    r = _cli()  # no --workdir: no silent ./runs/default
    assert r.returncode == 2 and "--workdir is required" in r.stderr and "Traceback" not in r.stderr
    wd = _copy(finished, tmp_path / "run")
    r = _cli("--workdir", wd, "--config.model.embed_dim=48", "--config.total_steps=9", *TINY_SHAPES_ARGS)
    assert r.returncode == 2 and "can be restored" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli("--workdir", finished, "--config.total_steps=6", "--config.batch_size=16", *TINY_SHAPES_ARGS)
    assert r.returncode == 0 and "already finished" in r.stdout, r.stdout + r.stderr


def test_checksums_of_sharded_arrays_match_the_host_and_gather_nothing():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from clipjax import checksums as cs
    from clipjax.sharding import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 4})
    rng = np.random.default_rng(0)
    tree = {"w": rng.standard_normal((16, 12)).astype(np.float32), "b": rng.standard_normal(8).astype(jnp.bfloat16),
            "i": np.arange(24, dtype=np.int32).reshape(8, 3)}
    specs = {"w": P("fsdp", "data"), "b": P("data"), "i": P(("data", "fsdp"))}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    assert cs.tree_checksums(sharded) == cs.host_tree_checksums(tree)
    hlo = cs._device_sums.lower(sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    flipped = {**tree, "w": tree["w"].copy()}
    flipped["w"].view(np.uint32)[3, 4] ^= 1 << 7
    assert cs.mismatches(cs.host_tree_checksums(tree), cs.host_tree_checksums(flipped)) == ["['w']"]
