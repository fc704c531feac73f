"""Input throughput from webdataset tar shards: clipjax's ShardStream / ShardTrainData reading
the same shards from local disk and from a GCS emulator, against pip `webdataset`'s own loader
on local disk, in one run.

    python benchmarks/shard_throughput.py [--images 384] [--shards 8] [--batch-size 32] [--rounds 3]

Data: JPEG photos (scikit-image samples, randomly cropped and rescaled to 256-512 px, quality
90) with a caption each, packed into --shards tar shards (key.jpg + key.txt).

Two measures per pipeline:
  raw      samples/s of undecoded samples (tar parsing, shuffle buffer of 100, 4 shards in
           flight): ShardStream local, ShardStream gs:// (emulator), wds.WebDataset(...).shuffle(100)
  decoded  samples/s of training batches (decode to RGB, random resized crop scale 0.9-1.0 to
           224 bicubic, batch, CLIP BPE tokenise):
             ShardTrainData local / gs://: PIL decode (clipjax.data.images) + the tf crop, 2 decode
               threads, the batches as normalised float32 global jax arrays (1 CPU device)
             webdataset: WebDataset(urls).shuffle(100).decode("pil").to_tuple("jpg", "txt")
               .map(PIL crop + resize(BICUBIC, box=...) + normalise).batched(B) + tokenise,
               in a torch WebLoader with 2 workers (open_clip's setup), and in-process (0 workers)
Each round builds fresh pipelines, takes one batch (start-up, not timed), then times the next
--batches; rounds alternate the pipelines and the median is reported.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tarfile
import tempfile
import time
import types

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def make_shards(folder: str, n: int, n_shards: int, seed: int = 0) -> list[bytes]:
    from PIL import Image
    from skimage import data

    photos = [getattr(data, k)() for k in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
    rng = np.random.default_rng(seed)
    blobs = []
    per = math.ceil(n / n_shards)
    for s in range(n_shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                p = photos[i % len(photos)]
                h, w = p.shape[:2]
                ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                side = int(rng.uniform(256, 512))
                img = Image.fromarray(p[y:y + ch, x:x + cw, :3]).resize((side, int(side * rng.uniform(0.75, 1.33))))
                jb = io.BytesIO()
                img.save(jb, format="JPEG", quality=90)
                cap = f"a photo number {i} of something {['red', 'blue', 'green'][i % 3]}".encode()
                for ext, payload in (("jpg", jb.getvalue()), ("txt", cap)):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        blobs.append(buf.getvalue())
        with open(os.path.join(folder, f"{s:05d}.tar"), "wb") as f:
            f.write(blobs[-1])
    return blobs


# ------------------------------------------------------------------------------ clipjax
def clipjax_raw(src):
    from clipjax.data.shards import ShardStream

    st = ShardStream(src, shuffle_buffer=100, in_flight=4, seed=0)
    return (lambda: next(st)), st.close


def clipjax_batches(src, batch):
    import ml_collections

    from clipjax import sharding as shd
    from clipjax.data.shard_pipeline import ShardTrainData

    cfg = types.SimpleNamespace(vision=types.SimpleNamespace(image_size=224),
                                text=types.SimpleNamespace(kind="causal", context_length=77))
    d = ml_collections.ConfigDict(dict(source=src, seed=0, shuffle_buffer=100, in_flight=4, decode_threads=2,
                                       tokenizer=""))
    mesh = shd.make_mesh({"data": -1})
    data = ShardTrainData(d, batch, cfg, mesh, shd.rules_from_config(None))

    def step():
        imgs, ids = next(data)
        imgs.block_until_ready()

    return step, data.close


# ------------------------------------------------------------------------------ webdataset
def _box(rng, w, h, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):  # torchvision's RandomResizedCrop rule
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1), cw, ch
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side, side


def _wds_crop(sample):
    from PIL import Image

    im, cap = sample
    im = im.convert("RGB")
    x, y, cw, ch = _box(np.random.default_rng(), *im.size)
    im = im.resize((224, 224), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    return (np.asarray(im, np.float32) / 255.0 - MEAN) / STD, cap


def _wds_tokenize(batch):
    from clipjax.tokenizer import tokenize

    imgs, caps = batch
    return imgs, tokenize(list(caps))


def wds_raw(urls):
    import webdataset as wds

    it = iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False).repeat().shuffle(100))
    return (lambda: next(it)), (lambda: None)


def wds_batches(urls, batch, workers):
    import webdataset as wds

    ds = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False,
                         nodesplitter=wds.shardlists.single_node_only)
          .repeat().shuffle(100).decode("pil").to_tuple("jpg", "txt").map(_wds_crop)
          .batched(batch).map(_wds_tokenize))
    if workers:
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4)
        it = iter(loader)
    else:
        it = iter(ds)
    return (lambda: next(it)), (lambda: None)


# ------------------------------------------------------------------------------ timing
def timed(make, per_call: int, calls: int) -> float:
    step, close = make()
    try:
        step()  # start-up, not timed
        t = time.perf_counter()
        for _ in range(calls):
            step()
        return per_call * calls / (time.perf_counter() - t)
    finally:
        close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--raw-samples", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-gcs", action="store_true")
    args = ap.parse_args()

    from tests.gcs_emulator import gcs_emulator

    from clipjax import storage

    tmp = tempfile.mkdtemp(prefix="shard-bench-")
    blobs = make_shards(tmp, args.images, args.shards)
    local = os.path.join(tmp, "{%05d..%05d}.tar" % (0, args.shards - 1))
    urls = [os.path.join(tmp, f"{s:05d}.tar") for s in range(args.shards)]
    mb = sum(len(b) for b in blobs) / 2**20
    print(f"{args.images} samples in {args.shards} shards, {mb:.1f} MiB; batch {args.batch_size}, "
          f"{args.batches} timed batches, {args.raw_samples} raw samples, {args.rounds} rounds", flush=True)
    gcs = "gs://bench/shards/{%05d..%05d}.tar" % (0, args.shards - 1)

    B = args.batch_size
    pipes = {
        ("raw", "clipjax local"): lambda: clipjax_raw(local),
        ("raw", "clipjax gs:// (emulator)"): lambda: clipjax_raw(gcs),
        ("raw", "webdataset local"): lambda: wds_raw(urls),
        ("decoded", "clipjax ShardTrainData local"): lambda: clipjax_batches(local, B),
        ("decoded", "clipjax ShardTrainData gs:// (emulator)"): lambda: clipjax_batches(gcs, B),
        ("decoded", "webdataset WebLoader, 2 workers, local"): lambda: wds_batches(urls, B, 2),
        ("decoded", "webdataset in-process, local"): lambda: wds_batches(urls, B, 0),
    }
    if args.no_gcs:
        pipes = {k: v for k, v in pipes.items() if "gs://" not in k[1]}
    results: dict = {k: [] for k in pipes}
    with gcs_emulator("bench"):
        if not args.no_gcs:
            for s, b in enumerate(blobs):
                storage.write_bytes(f"gs://bench/shards/{s:05d}.tar", b)
        for r in range(args.rounds):
            for (kind, name), make in pipes.items():
                if kind == "raw":
                    v = timed(make, 1, args.raw_samples)
                else:
                    v = timed(make, B, args.batches)
                results[(kind, name)].append(v)
                print(f"  round {r}: {kind:8s} {name:42s} {v:8.1f} samples/s", flush=True)
    print()
    for kind, ref in (("raw", "webdataset local"), ("decoded", "webdataset WebLoader, 2 workers, local")):
        base = statistics.median(results[(kind, ref)])
        print(f"| {kind} pipeline | samples/s | vs {ref} |")
        print("|---|---|---|")
        for (k, name), vals in results.items():
            if k == kind:
                m = statistics.median(vals)
                print(f"| {name} | {m:.1f} | {m / base:.2f}x |")
        print()


if __name__ == "__main__":
    main()
