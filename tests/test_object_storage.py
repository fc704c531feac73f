"""The pod path against a real object-storage server on 127.0.0.1 (gcp-storage-emulator, in
memory, tests/gcs_emulator.py): a run whose workdir and data shards live in gs://, killed after
its first checkpoint and re-run, ends bitwise equal to an uninterrupted run; clipjax.load,
evaluate.py and convert.py read gs://; a missing bucket or shard, an unreachable endpoint and a
refusing (403) server are one line naming the path, before the first step."""

import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clipjax import storage
from gcs_emulator import emulator_env, free_port, gcs_emulator
from test_train_resume import _assert_bitwise_equal, _env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARDS = "gs://bkt/shards/{00000..00003}.tar"
TOTAL, EVERY = 12, 4
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def _shard_bytes(shard: int, n: int = 24) -> bytes:
    """A webdataset tar shard of n drawn shapes (JPEG) with their captions."""
    import tarfile

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(shard)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            color, shape = list(COLORS)[rng.integers(4)], SHAPES[rng.integers(2)]
            img = Image.new("RGB", (48, 48), (245, 245, 245))
            x, y = rng.integers(4, 20, size=2)
            box = (int(x), int(y), int(x) + 24, int(y) + 24)
            (ImageDraw.Draw(img).rectangle if shape == "square" else ImageDraw.Draw(img).ellipse)(box, fill=COLORS[color])
            jpg = io.BytesIO()
            img.save(jpg, format="JPEG", quality=90)
            for ext, data in (("jpg", jpg.getvalue()), ("txt", f"a photo of a {color} {shape}.".encode())):
                info = tarfile.TarInfo(f"s{shard:02d}_{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator("bkt") as env:
        for shard in range(4):
            storage.write_bytes(f"gs://bkt/shards/{shard:05d}.tar", _shard_bytes(shard))
        yield env


def _train_cmd(workdir, *extra, source=SHARDS):
    return [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", workdir,
            f"--config.total_steps={TOTAL}", "--config.batch_size=16", "--config.log_every=1",
            "--config.eval_every=0", f"--config.checkpoint_every={EVERY}", "--config.keep_checkpoints=2",
            "--config.optimizer.warmup_steps=2", "--config.data.name=shards", f"--config.data.source={source}",
            "--config.data.shuffle_buffer=32", "--config.data.in_flight=2", "--config.data.decode_threads=2",
            "--config.model.vision.image_size=32", "--config.model.vision.patch_size=8", *extra]


def _committed(workdir) -> list[int]:
    from clipjax.train.checkpoints import is_committed

    root = storage.join(workdir, "checkpoints")
    try:
        names = storage.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and is_committed(storage.join(root, n)))


def _losses(workdir) -> dict:
    from clipjax.train.metrics import read_metrics

    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


@pytest.fixture(scope="module")
def reference(gcs):
    r = subprocess.run(_train_cmd("gs://bkt/ref"), cwd=ROOT, env=_env(gcs), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return "gs://bkt/ref"


def test_sigkill_then_resume_on_object_storage_is_bitwise_identical(gcs, reference):
    from clipjax.convert.formats import load_clipjax

    run = "gs://bkt/run"
    proc = subprocess.Popen(_train_cmd(run), cwd=ROOT, env=_env(gcs), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    end = time.time() + 300
    while time.time() < end and proc.poll() is None and not _committed(run):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _committed(run) and max(_committed(run)) < TOTAL

    r = subprocess.run(_train_cmd(run), cwd=ROOT, env=_env(gcs), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "resumed from step" in r.stderr + r.stdout
    _, ref_params = load_clipjax(storage.join(reference, "checkpoints"))
    _, params = load_clipjax(storage.join(run, "checkpoints"))
    _assert_bitwise_equal(params, ref_params)
    assert _losses(run) == _losses(reference)  # the same examples, in the same order, after the resume
    assert len(_losses(reference)) == TOTAL
    # metrics on the store are part objects; the loss curve was uploaded
    assert storage.listdir(storage.join(run, "metrics"))[0].startswith("part-")
    assert storage.size(storage.join(reference, "loss_curve.png")) > 1000


def test_load_evaluate_and_convert_from_object_storage(gcs, reference, tmp_path):
    import clipjax
    from clipjax.variables import flatten_variables

    model = clipjax.load(reference)
    emb = model.encode_text(["a photo of a red square."])
    assert np.all(np.isfinite(np.asarray(emb)))

    r = subprocess.run([sys.executable, "convert.py", "--src", reference, "--dst", "gs://bkt/hf", "--to", "hf"],
                       cwd=ROOT, env=_env(gcs), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config.json" in storage.listdir("gs://bkt/hf")
    back = clipjax.load("gs://bkt/hf")
    a, b = flatten_variables(model.variables), flatten_variables(back.variables)
    assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)

    # a pretrained CLIP on gs:// under another run: LiT's locked tower (config.init_from), RAM's
    # teacher (config.ram.clip) and a plan's architecture read it as they read a local one
    import jax

    from clipjax.tasks.pretrained import clip_architecture, load_pretrained_parts
    from clipjax.tasks.ram_teacher import read_clip

    assert clip_architecture(reference, "init_from") == model.cfg
    assert read_clip(reference)[0] == model.cfg
    fresh = jax.tree_util.tree_map(lambda x: x * 0, model.variables)
    locked = flatten_variables(load_pretrained_parts(fresh, reference, ["visual"]))
    assert all(np.array_equal(np.asarray(locked[k]), np.asarray(a[k])) == ("/visual/" in f"/{k}/")
               for k in a if np.any(np.asarray(a[k]) != 0))

    # zero-shot on the shards' own captions, the JSON report written to gs://
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"{c} {s}" for c in COLORS for s in SHAPES) + "\n")
    r = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", reference, "--task", "retrieval",
                        "--dataset", "collection", "--source", "gs://bkt/shards/00000.tar", "--no-progress",
                        "--output", "gs://bkt/eval/retrieval.json"],
                       cwd=ROOT, env=_env(gcs), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(storage.read_text("gs://bkt/eval/retrieval.json"))
    assert 0.0 <= report["image_to_text_R@1"] <= 1.0


def _one_line_error(r, *needles):
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert err and err[-1].startswith("error:"), r.stderr[-3000:]
    for n in needles:
        assert n in err[-1], err[-1]
    assert "step 1 loss" not in r.stderr  # said before the first step
    return err[-1]


def test_missing_bucket_is_one_line_from_train_py(gcs):
    r = subprocess.run(_train_cmd("gs://no-such-bucket/run"), cwd=ROOT, env=_env(gcs), capture_output=True,
                       text=True, timeout=300)
    _one_line_error(r, "gs://no-such-bucket/run", "does not exist")


def _tiny_config(source=SHARDS):
    from configs.default import get_config

    c = get_config()
    c.total_steps, c.batch_size, c.eval_every, c.tensorboard = 2, 16, 0, False
    c.data.name, c.data.source = "shards", source
    c.model.vision.image_size, c.model.vision.patch_size = 32, 8
    return c


def test_missing_shard_is_named_before_the_first_step(gcs):
    from clipjax.tasks import train

    with pytest.raises(FileNotFoundError, match="gs://bkt/shards/00004.tar"):
        train(_tiny_config("gs://bkt/shards/{00000..00007}.tar"), "gs://bkt/missing-shard")
    assert not storage.exists("gs://bkt/missing-shard/checkpoints/1")


class _Refuse(http.server.BaseHTTPRequestHandler):
    """An object store that answers every request 403, as GCS does without the permission."""

    def _deny(self):
        body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.list access"}})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args):
        pass


def _with_endpoint(monkeypatch, url):
    from gcs_emulator import _reset_gcsfs

    for k, v in emulator_env(url).items():
        monkeypatch.setenv(k, v)
    _reset_gcsfs()


def test_unreachable_endpoint_and_permission_error_are_one_line(monkeypatch):
    """What train() checks first (the workdir's bucket answers) and what a shard list needs (a
    listing), against a closed port and a server that refuses: one StorageError line each,
    naming the path, in seconds (not gcsfs' minute of retries)."""
    from clipjax.tasks import train

    _with_endpoint(monkeypatch, f"http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(storage.StorageError, match=r"gs://bkt/run: cannot reach the object store at 127\.0\.0\.1"):
        train(_tiny_config(), "gs://bkt/run")
    with pytest.raises(storage.StorageError, match="cannot reach the object store"):
        storage.expand(SHARDS)
    assert time.time() - t0 < 30

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _with_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(storage.StorageError, match="gs://bkt/run: permission denied"):
            train(_tiny_config(), "gs://bkt/run")
        with pytest.raises(storage.StorageError, match="gs://bkt/shards: permission denied"):
            storage.expand(SHARDS)
    finally:
        server.shutdown()
        monkeypatch.undo()
        from gcs_emulator import _reset_gcsfs

        _reset_gcsfs()


_TWO_PROCESS_DRIVER = r"""
import json, sys
from clipjax.train.distributed import maybe_initialize_distributed
maybe_initialize_distributed()
import jax
import numpy as np
from clipjax import sharding as shd
from clipjax.data.shard_pipeline import ShardTrainData
from clipjax.data.shards import ShardStream
from clipjax.tasks.clip import model_config
from configs.default import get_config

source = sys.argv[1]
# one epoch of this process's shards, read from the emulator
with ShardStream(source, process_index=jax.process_index(), process_count=jax.process_count(), epochs=1,
                 shuffle_buffer=16, in_flight=2) as stream:
    keys = [s["__url__"] + "/" + s["__key__"] for s in stream]
# and the training stream: global batches assembled from both processes' rows
c = get_config()
c.data.name, c.data.source, c.data.shuffle_buffer = "shards", source, 16
c.model.vision.image_size, c.model.vision.patch_size = 32, 8
mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
data = ShardTrainData(c.data, 16, model_config(c), mesh, shd.DEFAULT_RULES)
images, ids = next(data)
shape = list(images.shape)
data.close()
print("KEYS " + json.dumps({"process": jax.process_index(), "keys": keys, "global_batch": shape}))
"""


def test_two_processes_read_disjoint_shards_from_the_emulator(gcs):
    """Two processes joined by jax.distributed read one epoch from gs://: every example once."""
    port = free_port()
    procs = []
    for i in range(2):
        env = _env(gcs)
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", CLIPJAX_COORDINATOR=f"127.0.0.1:{port}",
                   CLIPJAX_NUM_PROCESSES="2", CLIPJAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_DRIVER, SHARDS], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            line = next(ln for ln in out.splitlines() if ln.startswith("KEYS "))
            results.append(json.loads(line[5:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    a, b = (set(r["keys"]) for r in sorted(results, key=lambda r: r["process"]))
    assert all(len(set(r["keys"])) == len(r["keys"]) for r in results)  # none twice
    assert not a & b  # disjoint
    every = {f"gs://bkt/shards/{s:05d}.tar/s{s:02d}_{i:04d}" for s in range(4) for i in range(24)}
    assert a | b == every  # none lost
    assert {k.rsplit("/", 1)[0] for k in a}.isdisjoint({k.rsplit("/", 1)[0] for k in b})  # whole shards each
    assert all(r["global_batch"] == [16, 32, 32, 3] for r in results)


def test_s3_serves_data_but_not_checkpoints(tmp_path):
    """s3:// (moto's server): shards and index files stream from it; an Orbax workdir there is
    refused in one line (Orbax 0.12 writes checkpoints locally or to gs:// only)."""
    from clipjax.data.collection import ImageTextCollection
    from clipjax.data.shards import ShardStream
    from clipjax.tasks import train
    from s3_server import s3_server

    with s3_server("data"):
        for shard in range(2):
            storage.write_bytes(f"s3://data/shards/{shard:05d}.tar", _shard_bytes(shard, n=6))
        with ShardStream("s3://data/shards/{00000..00001}.tar", epochs=1, in_flight=2) as stream:
            assert len({s["__key__"] for s in stream}) == 12
        storage.write_text("s3://data/index.csv", "filepath,title\nshards/00000.tar,not an image\n")
        coll = ImageTextCollection("s3://data/index.csv", validate=False)
        assert list(coll) == [] and coll.counts.skipped_corrupt == 1  # read from s3, decoded, counted
        with pytest.raises(storage.StorageError, match=r"s3://data/run: Orbax checkpoints can be written locally "
                                                       r"or to gs:// only"):
            train(_tiny_config("s3://data/shards/{00000..00001}.tar"), "s3://data/run")
