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


# ---------------------------------------------------------------------------- hostile collections
# Peak RSS is the process's own VmHWM from /proc: getrusage's ru_maxrss survives exec, so a
# child forked from a large pytest process would report the parent's peak.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024"

_HOSTILE = r'''
import json, os, sys, time
from clipjax.data.collection import ImageTextCollection
src, max_bytes = sys.argv[1], int(sys.argv[2])
coll = ImageTextCollection(src, max_bytes=max_bytes)
t0 = time.time()
n = sum(1 for _ in coll)
print(json.dumps(dict(examples=n, counts=coll.counts.as_dict(), seconds=time.time() - t0, peak_rss_mb=PEAK)))
'''.replace("PEAK", PEAK_RSS)


def _png(path, size=8):
    from PIL import Image

    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(path)


def _hostile_run(src, max_bytes=2**20):
    import json

    r = subprocess.run([sys.executable, "-c", _HOSTILE, str(src), str(max_bytes)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)  # a FIFO that blocked would time out here
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_collection_of_devices_fifos_and_huge_files_stays_small_and_finishes(tmp_path):
    _png(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "fifo.png")
    with open(tmp_path / "huge.png", "wb") as f:  # 3 GiB, sparse: costs no disk, would cost 3 GiB read
        f.truncate(3 * 2**30)
    rows = ["filepath,title", "ok.png,a fine image", "/dev/zero,endless", "fifo.png,blocks forever",
            "huge.png,too big", "ok.png,the same image again"]
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    out = _hostile_run(tmp_path / "index.csv")
    assert out["examples"] == 2
    assert out["counts"]["skipped_not_a_file"] == 2 and out["counts"]["skipped_too_large"] == 1
    assert out["peak_rss_mb"] < 600, out  # python + numpy + PIL + jax import; never the 3 GiB


def test_a_huge_member_in_a_small_tar_gz_is_skipped_unread(tmp_path):
    import io
    import tarfile

    path = tmp_path / "shard.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for key, size in (("000000", None), ("000001", 512 * 2**20)):  # 512 MiB of zeros: ~0.5 MB gzipped
            data = io.BytesIO()
            if size is None:
                from PIL import Image

                Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(data, format="PNG")
                payload = data.getvalue()
                info = tarfile.TarInfo(f"{key}.png")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info = tarfile.TarInfo(f"{key}.png")
                info.size = size

                class Zeros(io.RawIOBase):
                    left = size

                    def readable(self):
                        return True

                    def readinto(self, b):
                        n = min(len(b), self.left)
                        b[:n] = bytes(n)
                        self.left -= n
                        return n

                tar.addfile(info, io.BufferedReader(Zeros(), 2**20))
            cap = tarfile.TarInfo(f"{key}.txt")
            cap.size = 5
            tar.addfile(cap, io.BytesIO(b"shape"))
    assert os.path.getsize(path) < 8 * 2**20
    out = _hostile_run(path)
    assert out["examples"] == 1 and out["counts"]["skipped_too_large"] == 1
    assert out["peak_rss_mb"] < 600, out


def test_each_bad_row_is_counted_once_over_epochs_and_captions_keep_their_words(tmp_path):
    import json

    from clipjax.data.collection import ImageTextCollection

    _png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = [{"filepath": "ok.png", "title": "a\x00red circle"}, {"filepath": "bad.png", "title": "broken"},
            {"filepath": "ok.png", "title": ["a", "list"]}, {"filepath": "ok.png", "title": {"a": 1}},
            {"filepath": "missing.png", "title": "gone"}]
    (tmp_path / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    coll = ImageTextCollection(str(tmp_path / "index.jsonl"))
    seen = [ex["caption"] for _ in range(5) for ex in coll]
    assert seen == ["a red circle"] * 5  # NUL became a space; list / dict titles are not text
    c = coll.counts
    assert (c.skipped_corrupt, c.skipped_bad_record, c.skipped_missing) == (1, 2, 1)  # once each, not per epoch
    assert c.decoded == 5


def test_training_on_a_collection_with_a_large_photo_stays_bounded_and_exits(tmp_path):
    """The shuffle buffer holds crops, not photos; the process exits after its last step."""
    import json

    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    rows = ["filepath,title", "big.png,a large photo"]
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"s{i}.png")
        rows.append(f"s{i}.png,small picture {i}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    code = ("import runpy, sys; sys.argv = ['train.py'] + sys.argv[1:]\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
            f"finally:\n    print('PEAK_RSS_MB', {PEAK_RSS})\n")
    r = subprocess.run([sys.executable, "-c", code, "--config", "configs/default.py", "--workdir", str(tmp_path / "run"),
                        "--config.data.name=collection", f"--config.data.source={tmp_path / 'index.csv'}",
                        "--config.total_steps=3", "--config.batch_size=8", "--config.eval_every=0",
                        "--config.log_every=1", "--config.data.shuffle_buffer=400", "--config.tensorboard=False"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # a hang fails here
    assert r.returncode == 0, r.stderr[-3000:]
    peak = int(r.stdout.split("PEAK_RSS_MB")[1].split()[0])
    # 400 decoded 2000 px photos alone would be 4.8 GB; 400 crops of 64 px are 5 MB
    assert peak < 2500, peak
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert max(x["step"] for x in lines) == 3


@pytest.mark.parametrize("args, says", [
    (["--config.total_step=5"], "unknown config key 'total_step': did you mean 'total_steps'?"),
    (["--config=configs/no_such_config.py"], "configs/no_such_config.py"),
    (["--config.mesh.data=64"], "needs 64 devices"),
    (["--config.batch_size=30", "--config.mesh.data=4"], "batch_size 30 does not split over the 4 devices"),
    (["--config.data.name=no_such_dataset_xyz"], "unknown dataset 'no_such_dataset_xyz'"),
    (["--config.keep_checkpoints=0"], "keep_checkpoints must be an integer >= 1"),
    (["--config.init_from={tmp}/no_such_checkpoint"], "No such checkpoint"),
    (["--config.data.name=collection", "--config.data.source={tmp}/index.csv"], "no column(s) ['filepath']"),
])
def test_each_mistake_is_one_line_and_exit_2(tmp_path, args, says):
    (tmp_path / "index.csv").write_text("path,title\na.png,a caption\n")  # open_clip's default column is filepath
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(tmp_path / "run"),
                        *TINY_SHAPES_ARGS, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and says in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1


def test_a_state_dict_missing_a_middle_block_is_refused_with_every_key(tmp_path):
    import dataclasses

    from clipjax import init_variables
    from clipjax.convert.common import read_state_dict, write_state_dict
    from clipjax.convert.openai_clip import load_openai, save_openai
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-vit")
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, layers=4))
    save_openai(init_variables(cfg), cfg, str(tmp_path / "m.pt"))
    sd = {k: v for k, v in read_state_dict(str(tmp_path / "m.pt")).items() if not k.startswith("transformer.resblocks.1.")}
    write_state_dict(sd, str(tmp_path / "cut.pt"))  # no .clipjax.json sidecar beside it
    with pytest.raises(CheckpointError, match="shallower model") as e:
        load_openai(str(tmp_path / "cut.pt"))
    keys = [k for k in read_state_dict(str(tmp_path / "m.pt")) if k.startswith("transformer.resblocks.1.")]
    assert len(keys) == 12 and all(k in str(e.value) for k in keys) and "more" not in str(e.value)


def test_confine_keeps_reads_under_the_collection_root(tmp_path):
    from clipjax.data.collection import ImageTextCollection

    root = tmp_path / "coll"
    root.mkdir()
    _png(root / "ok.png")
    _png(tmp_path / "secret.png")  # outside the root
    os.symlink(tmp_path / "secret.png", root / "link.png")
    rows = ["filepath,title", "ok.png,inside", "../secret.png,dot dot", f"{tmp_path / 'secret.png'},absolute",
            "link.png,a symlink that leaves"]
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    open_ = ImageTextCollection(str(root / "index.csv"))  # open_clip's rule: every path is read
    assert sum(1 for _ in open_) == 4
    confined = ImageTextCollection(str(root / "index.csv"), confine=True)
    assert [ex["caption"] for ex in confined] == ["inside"] and confined.counts.skipped_outside_root == 3


def test_a_disk_that_fills_during_an_async_save_is_reported_once_where_it_fails(tmp_path):
    """A 3 MB tmpfs as workdir (mounting needs root, as on this machine and in CI; skipped
    elsewhere): the first save fails in Orbax's background thread; training stops with one
    error line naming the failure and the resume point, exit 2."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        r = _cli("--workdir", str(disk / "run"), "--config.total_steps=12", "--config.batch_size=16",
                 "--config.eval_every=0", "--config.checkpoint_every=1", "--config.keep_checkpoints=20",
                 "--config.tensorboard=False", *TINY_SHAPES_ARGS)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "writing a checkpoint" in errors[0] and "No space left on device" in errors[0]
    assert "starts from scratch" in errors[0] or "resumes from step" in errors[0]


def test_a_batch_size_that_does_not_divide_the_resumed_position_is_named(finished, tmp_path):
    from clipjax.errors import ConfigError

    wd = _copy(finished, tmp_path / "run")  # stopped after 6 steps of 16: position 96
    c = _cfg(total=9)
    c.batch_size = 64
    with pytest.raises(ConfigError, match="stopped after 96 examples, which batch_size 64 does not divide"):
        train(c, wd)
