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
from test_train_resume import _assert_bitwise_equal

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


def _env(extra):
    env = dict(os.environ)
    env.update(extra)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    for k in ("CLIPJAX_COORDINATOR", "CLIPJAX_NUM_PROCESSES", "CLIPJAX_PROCESS_ID"):
        env.pop(k, None)
    return env


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
