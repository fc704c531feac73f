"""Streaming webdataset tar shards (clipjax.data.shards.ShardStream) and the training batches
built on them (clipjax.data.shard_pipeline.ShardTrainData): sources, disjoint shards per
process, deterministic order, exact resume from state(), failures counted."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipjax import storage
from clipjax.data import shards as shards_mod
from clipjax.data.shards import ShardStream, iter_samples, parse_sources
from clipjax.errors import ConfigError


def _image_bytes(i: int, fmt: str) -> bytes:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 256, (12 + i % 5, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def shard_bytes(s: int, per: int, prefix: str = "") -> bytes:
    """One tar shard: `per` samples key.{jpg|png} + key.txt (every 4th caption in .json)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(per):
            key = f"{prefix}s{s:03d}_{i:03d}"
            fmt = "PNG" if i % 3 == 0 else "JPEG"
            files = {"png" if fmt == "PNG" else "jpg": _image_bytes(s * 1000 + i, fmt)}
            if i % 4 == 3:
                files["json"] = json.dumps({"caption": f"json caption {key}"}).encode()
            else:
                files["txt"] = f"a caption of {key}".encode()
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_shards(folder, n: int, per: int = 6, prefix: str = "") -> str:
    os.makedirs(folder, exist_ok=True)
    for s in range(n):
        with open(os.path.join(folder, f"{s:05d}.tar"), "wb") as f:
            f.write(shard_bytes(s, per, prefix))
    return os.path.join(str(folder), "{%05d..%05d}.tar" % (0, n - 1))


def keys(stream, n=None):
    out = []
    for x in stream:
        out.append((x["__key__"], x["__epoch__"]))
        if n is not None and len(out) >= n:
            break
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    return make_shards(d / "a", 7, per=6), make_shards(d / "b", 3, per=4, prefix="b")


# ------------------------------------------------------------------------------ sources
def test_brace_expansion_weights_and_missing_shard(shards, tmp_path):
    a, b = shards
    lists, ws = parse_sources(f"{a}::{b}", "1::2")
    assert [len(x) for x in lists] == [7, 3] and ws == [1.0, 2.0]
    assert lists[0][0].endswith("a/00000.tar") and lists[0][-1].endswith("a/00006.tar")
    with pytest.raises(ConfigError, match="2 source weights"):
        parse_sources(a, "1::2")
    # weights without resampling: list b's shards twice per epoch, list a's once
    st = ShardStream(f"{a}::{b}", weights="1::2", epochs=1, in_flight=2)
    seq = st.shard_sequence(100)
    assert len(seq) == 7 + 2 * 3 and sorted(set(seq)) == sorted(lists[0] + lists[1])
    assert all(seq.count(u) == 2 for u in lists[1])
    got = keys(st)
    assert len(got) == 7 * 6 + 2 * 3 * 4
    # a fractional weight: that share of the list's shards, drawn per epoch
    half = ShardStream(f"{a}::{b}", weights=[0.5, 1], epochs=1)
    assert len(half.shard_sequence(100)) == round(0.5 * 7) + 3
    # resampled: weighted draws with replacement (list b: 3 shards of weight 10 vs 7 of weight 1)
    rs = ShardStream(f"{a}::{b}", weights="1::10", resampled=True)
    seq = rs.shard_sequence(2000)
    frac_b = sum(u in lists[1] for u in seq) / len(seq)
    assert abs(frac_b - 30 / 37) < 0.05
    # a missing shard is named at construction
    missing = a.replace("00006", "00007")
    with pytest.raises(FileNotFoundError, match="00007.tar"):
        ShardStream(missing)
    with pytest.raises(FileNotFoundError, match="nothere"):
        ShardStream(str(tmp_path / "nothere" / "{0..3}.tar"))


def test_disjoint_shards_per_process_none_lost(shards):
    a, _ = shards
    everything = {k for k, _ in keys(ShardStream(a, epochs=1))}
    assert len(everything) == 7 * 6
    for procs in (2, 3):
        per_epoch = {0: [], 1: []}
        share = []
        for p in range(procs):
            st = ShardStream(a, process_index=p, process_count=procs, epochs=2, in_flight=2, shuffle_buffer=5, seed=3)
            share.append({u for u in st.shard_sequence(100)})
            for k, e in keys(st):
                per_epoch[e].append(k)
        for e, ks in per_epoch.items():
            assert len(ks) == len(set(ks)) == len(everything) and set(ks) == everything, (procs, e)
        # epoch 0's shards of the processes are disjoint
        first = [set(ShardStream(a, process_index=p, process_count=procs, epochs=1).shard_sequence(100))
                 for p in range(procs)]
        assert sum(len(s) for s in first) == 7 and len(set().union(*first)) == 7
    with pytest.raises(ConfigError, match="7 shards per epoch for 8 processes"):
        ShardStream(a, process_index=0, process_count=8)


def test_order_is_deterministic(shards):
    a, b = shards
    kw = dict(in_flight=3, shuffle_buffer=7, seed=5, epochs=2, read_ahead_samples=2)
    one = keys(ShardStream(f"{a}::{b}", **kw))
    two = keys(ShardStream(f"{a}::{b}", **kw))
    inline = keys(ShardStream(f"{a}::{b}", threads=False, **kw))
    assert one == two == inline and len(one) == 2 * (42 + 12)
    # epochs are permuted differently, and the seed changes the order
    assert [k for k, e in one if e == 0] != [k for k, e in one if e == 1]
    assert keys(ShardStream(f"{a}::{b}", **{**kw, "seed": 6})) != one
    # no shuffle buffer: round-robin over in_flight shards in sequence order
    st = ShardStream(a, in_flight=2, epochs=1)
    s0, s1 = [os.path.basename(u)[:5] for u in st.shard_sequence(2)]
    first4 = [k for k, _ in keys(st, 4)]
    assert first4 == [f"s{int(s0):03d}_000", f"s{int(s1):03d}_000", f"s{int(s0):03d}_001", f"s{int(s1):03d}_001"]


# ------------------------------------------------------------------------------ resume
def _resume_check(src, cuts, total=None, **kw):
    full = keys(ShardStream(src, **kw), total)
    n = len(full)
    for k in cuts:
        st = ShardStream(src, **kw)
        head = keys(st, k) if k else []
        state = json.loads(json.dumps(st.state()))
        st.close()
        resumed = ShardStream(src, state=state, **kw)
        tail = keys(resumed, None if total is None else total - k)
        resumed.close()
        assert head + tail == full[:n], f"cut at {k}"
        yield state


def test_exact_resume_at_cut_points(shards):
    a, b = shards
    src = f"{a}::{b}"
    kw = dict(in_flight=3, shuffle_buffer=8, seed=1, epochs=3, read_ahead_samples=3)
    per_epoch = 42 + 12
    cuts = [0, 1, 3, 9, 20, per_epoch - 2, per_epoch + 4, 2 * per_epoch + 1, 3 * per_epoch - 1]
    states = list(_resume_check(src, cuts, **kw))
    assert any(s["buffer"] for s in states) and any(s["epoch"] >= 1 for s in states)
    # several processes
    list(_resume_check(a, [5, 31], process_index=1, process_count=2, in_flight=2, shuffle_buffer=4, epochs=2))
    # resampled: an infinite stream, compared over its first 120 samples
    list(_resume_check(src, [0, 7, 50], total=120, resampled=True, weights="1::3", in_flight=2, shuffle_buffer=6,
                       seed=9))


def test_state_is_small(shards):
    a, b = shards
    st = ShardStream(f"{a}::{b}", in_flight=4, shuffle_buffer=30, seed=2)
    keys(st, 40)
    s = st.state()
    st.close()
    assert len(s["buffer"]) == 29 and len(s["slots"]) == 4
    flat = [x for ref in s["buffer"] + s["slots"] for x in ref]
    assert all(isinstance(x, int) for x in flat)
    text = json.dumps(s)
    assert len(text) < 400 + 20 * len(s["buffer"]), len(text)
    assert "caption" not in text  # references, never bytes
    # a state resumes only the stream it was taken from
    with pytest.raises(ConfigError, match="in_flight: saved 4, now 2"):
        ShardStream(f"{a}::{b}", in_flight=2, shuffle_buffer=30, seed=2, state=s)
    with pytest.raises(ConfigError, match="process"):
        ShardStream(f"{a}::{b}", in_flight=4, shuffle_buffer=30, seed=2, process_count=2, state=s)


# ------------------------------------------------------------------------------ failures
def test_corrupt_and_truncated_shards_skipped_and_counted(tmp_path):
    src = make_shards(tmp_path / "c", 4, per=6)
    p1 = tmp_path / "c" / "00001.tar"
    data = p1.read_bytes()
    p1.write_bytes(data[: len(data) // 2 + 100])  # truncated mid-way
    p2 = tmp_path / "c" / "00002.tar"
    data = bytearray(p2.read_bytes())
    # the header checksum of the 3rd member broken
    offs = [o for o, _, _ in iter_samples(io.BytesIO(bytes(data)), 0)]
    data[offs[2] + 150] ^= 0xFF
    p2.write_bytes(bytes(data))
    st = ShardStream(src, epochs=1, in_flight=2)
    got = keys(st)
    c = st.counts.as_dict()
    assert c["shards_skipped"] == 2 and c["shards_done"] == 4
    per_shard = {s: sum(k.startswith(f"s{s:03d}") for k, _ in got) for s in range(4)}
    assert per_shard[0] == 6 and per_shard[3] == 6
    # the sample being read when the tar breaks is dropped too (it may miss a member): sample 1
    # of shard 2 ends only at the broken header of sample 2
    assert 0 < per_shard[1] < 6 and per_shard[2] == 1
    assert len(got) == len(set(got))


def test_member_over_the_cap_is_skipped_unread(shards):
    a, _ = shards
    st = ShardStream(a, epochs=1, max_member_bytes=500)
    samples = list(st)
    assert len(samples) == 42
    big = [s for s in samples if s.get("__too_large__")]
    assert big and all(("jpg" not in s and "png" not in s) for s in big)
    assert st.counts.as_dict()["members_too_large"] == len(big)


class _Flaky:
    """A file that raises OSError once `fail_after` bytes have been read."""

    def __init__(self, f, fail_after):
        self.f, self.left = f, fail_after

    def read(self, n=-1):
        if self.left <= 0:
            raise OSError("connection reset (injected)")
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def seek(self, *a):
        return self.f.seek(*a)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_transient_errors_retried_then_skipped(shards, monkeypatch):
    a, _ = shards
    clean = keys(ShardStream(a, epochs=1, in_flight=2, threads=False))
    real_open = storage.open
    opened = {}

    def flaky_open(url, mode="rb", **kw):
        name = os.path.basename(url)
        opened[name] = opened.get(name, 0) + 1
        if name == "00003.tar" and opened[name] <= 2:  # fails mid-shard twice, then reads
            return _Flaky(real_open(url, mode, **kw), 700 * opened[name])
        if name == "00005.tar":  # never opens
            raise OSError("503 Service Unavailable (injected)")
        return real_open(url, mode, **kw)

    monkeypatch.setattr(shards_mod.storage, "open", flaky_open)
    st = ShardStream(a, epochs=1, in_flight=2, retries=3, retry_backoff=0.001)
    got = keys(st)
    c = st.counts.as_dict()
    assert c["read_retries"] == 2 + 3 and c["shards_skipped"] == 1
    assert opened["00005.tar"] == 4
    # shard 3 read completely, once each; shard 5 lost; nothing else changed
    assert sorted(got) == sorted(k for k in clean if not k[0].startswith("s005"))


def test_gcs_emulator(tmp_path):
    pytest.importorskip("gcp_storage_emulator")
    from tests.gcs_emulator import gcs_emulator

    local = make_shards(tmp_path / "l", 4, per=5)
    kw = dict(in_flight=2, shuffle_buffer=5, seed=4, epochs=2)
    want = keys(ShardStream(local, **kw))
    with gcs_emulator("bkt"):
        for s in range(4):
            storage.write_bytes(f"gs://bkt/shards/{s:05d}.tar", (tmp_path / "l" / f"{s:05d}.tar").read_bytes())
        src = "gs://bkt/shards/{00000..00003}.tar"
        st = ShardStream(src, **kw)
        assert st.urls[0] == "gs://bkt/shards/00000.tar"
        assert keys(st) == want
        head = keys(ShardStream(src, **kw), 13)
        s = ShardStream(src, **kw)
        keys(s, 13)
        tail = keys(ShardStream(src, state=json.loads(json.dumps(s.state())), **kw))
        assert head + tail == want
        with pytest.raises(FileNotFoundError, match="00004.tar"):
            ShardStream("gs://bkt/shards/{00000..00004}.tar")


# ------------------------------------------------------------------------------ train data
def _train_config(source, batch_size=16):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.batch_size = batch_size
    c.data.name = "shards"
    c.data.source = source
    c.data.shuffle_buffer = 10
    c.data.seed = 7
    c.data.in_flight = 3
    c.data.decode_threads = 2
    return c


def _train_data(c, position=0, state=None):
    from clipjax import sharding as shd
    from clipjax.data.shard_pipeline import ShardTrainData
    from clipjax.tasks.clip import model_config

    cfg = model_config(c)
    mesh = shd.make_mesh(dict(c.mesh))
    rules = shd.rules_from_config(c.get("axis_rules"))
    return ShardTrainData(c.data, c.batch_size, cfg, mesh, rules, position, state), cfg


def test_shard_train_data_batches_and_resume(tmp_path):
    import jax

    assert jax.device_count() == 8
    src = make_shards(tmp_path / "t", 5, per=9)
    # one undecodable image: skipped and counted
    with open(tmp_path / "t" / "00000.tar", "rb") as f:
        data = f.read()
    bad = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as tin, tarfile.open(fileobj=bad, mode="w") as tout:
        for m in tin.getmembers():
            payload = tin.extractfile(m).read()
            if m.name == "s000_001.jpg":
                payload = b"not a jpeg at all" * 10
                m.size = len(payload)
            tout.addfile(m, io.BytesIO(payload))
    (tmp_path / "t" / "00000.tar").write_bytes(bad.getvalue())

    c = _train_config(src)
    data, cfg = _train_data(c)
    s, L = cfg.vision.image_size, cfg.text.context_length
    batches, states = [], [data.state()]
    for _ in range(5):  # 80 examples: past the 45-sample epoch
        batches.append(next(data))
        states.append(json.loads(json.dumps(data.state())))
    counts = data.counts()
    data.close()
    assert not data._thread.is_alive()  # the process can exit
    assert data.position == 80
    for imgs, ids in batches:
        assert imgs.shape == (16, s, s, 3) and imgs.dtype == np.float32
        assert ids.shape == (16, L) and ids.dtype == np.int32
        assert np.isfinite(np.asarray(imgs)).all() and np.asarray(imgs).std() > 0.1
    assert counts["skipped_corrupt"] >= 1 and counts["decoded"] >= 80 and counts["shards_skipped"] == 0
    assert states[2]["position"] == 32 and states[2]["stream"]["epoch"] in (0, 1)

    for k in (2, 3):
        resumed, _ = _train_data(c, position=16 * k, state=states[k])
        for j in range(k, 5):
            imgs, ids = next(resumed)
            np.testing.assert_array_equal(np.asarray(imgs), np.asarray(batches[j][0]))
            np.testing.assert_array_equal(np.asarray(ids), np.asarray(batches[j][1]))
        resumed.close()
    with pytest.raises(ConfigError, match="saved at position 32"):
        _train_data(c, position=48, state=states[2])
