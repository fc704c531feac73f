"""Input-pipeline throughput for 224 px CLIP training preprocessing: clipjax's tf.data pipeline
against a PIL + torch DataLoader equivalent, side by side in one run.

    python benchmarks/data_throughput.py [--images 512] [--batch-size 128] [--batches 12] [--workers 2]

Data: JPEG photos (scikit-image's samples, randomly cropped and rescaled to 300-640 px) in a
temp folder with a CSV index of captions. Every pipeline does the same work per example: read
the file, decode, RGB, random resized crop (scale 0.9-1.0, ratio 3/4-4/3) resized bicubic to
224, CLIP normalisation, batch, tokenise the captions (CLIP BPE, context 77).

  clipjax tfds:        TFDataTrainData's tf.data graph over encoded JPEG records (the path of
                       every TFDS dataset: parallel tf decode + stateless crop + bicubic)
  clipjax collection:  TFDataTrainData with config.data.name="collection" on the CSV (files
                       opened and decoded by the robust Python reader, then the same graph)
  torch DataLoader:    a Dataset doing PIL open/convert/crop/resize(BICUBIC) + numpy
                       normalisation, tokenising in collate, num_workers=--workers

Rounds alternate the pipelines (A, B, C, A, B, C, ...), each round with fresh iterators (the first
batch, which includes start-up, is not timed), and the median per pipeline is reported.

    python benchmarks/data_throughput.py --default-config

measures instead the training stream of configs/default.py (clipjax_shapes at the tiny
model's 32 px), to set beside what its train step consumes (benchmarks/train_step_throughput.py).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def make_images(folder: str, n: int, seed: int = 0) -> str:
    from PIL import Image
    from skimage import data

    photos = [getattr(data, k)() for k in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = int(rng.uniform(300, 640))
        img = Image.fromarray(p[y:y + ch, x:x + cw, :3]).resize((side, int(side * rng.uniform(0.75, 1.33))))
        name = f"{i:05d}.jpg"
        img.save(os.path.join(folder, name), quality=90)
        rows.append((name, f"a photo number {i} of something {['red', 'blue', 'green'][i % 3]}"))
    index = os.path.join(folder, "index.csv")
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    return index


# ------------------------------------------------------------------------------------- torch
class TorchDataset:
    def __init__(self, folder, rows, size=224, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
        self.folder, self.rows, self.size, self.scale, self.ratio = folder, rows, size, scale, ratio

    def __len__(self):
        return 10 ** 9  # an endless stream, like a training loop's

    def _box(self, rng, w, h):  # torchvision's RandomResizedCrop.get_params rule
        area = w * h
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(*log_r))
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1), cw, ch
        side = min(w, h)
        return (w - side) // 2, (h - side) // 2, side, side

    def __getitem__(self, i):
        from PIL import Image

        name, caption = self.rows[i % len(self.rows)]
        rng = np.random.default_rng(i)
        with Image.open(os.path.join(self.folder, name)) as im:
            im = im.convert("RGB")
            x, y, cw, ch = self._box(rng, *im.size)
            im = im.resize((self.size, self.size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
        arr = (np.asarray(im, np.float32) / 255.0 - MEAN) / STD
        return arr, caption


def torch_collate(batch):
    import torch

    from clipjax.tokenizer import tokenize

    imgs = torch.from_numpy(np.stack([b[0] for b in batch]))
    return imgs, torch.from_numpy(tokenize([b[1] for b in batch]))


def torch_loader(folder, rows, batch, workers):
    import torch

    ds = TorchDataset(folder, rows)
    return iter(torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=torch_collate,
                                            prefetch_factor=4 if workers else None))


# ------------------------------------------------------------------------------------- clipjax
def clipjax_stream(index: str, folder: str, batch: int, via_collection: bool):
    import ml_collections

    from clipjax import sharding as shd
    from clipjax.data.pipeline import TFDataTrainData
    from clipjax.models.presets import get_preset

    cfg = get_preset("ViT-B/32")
    config = ml_collections.ConfigDict(dict(batch_size=batch, data=dict(
        name="collection", source=index, seed=0, shuffle_buffer=256, split="train", data_dir="", tokenizer="")))
    mesh = shd.make_mesh({"data": -1})

    class JpegRecords(TFDataTrainData):
        """The TFDS path: encoded records in, tf decode in the parallel map."""

        def _source(self, d):
            import tensorflow as tf

            with open(index) as f:
                rows = list(csv.DictReader(f))
            paths = [os.path.join(folder, r["filepath"]) for r in rows]
            ds = tf.data.Dataset.from_tensor_slices({"path": paths, "caption": [r["title"] for r in rows]})
            ds = ds.map(lambda ex: {"image": tf.io.read_file(ex["path"]), "caption": ex["caption"]},
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds, "image", "caption", False

    cls = TFDataTrainData if via_collection else JpegRecords
    return cls(config, cfg, mesh, shd.DEFAULT_RULES)


def time_batches(it, n: int, batch: int) -> float:
    next(it)  # warm (first batch: graph building, worker start)
    t = time.perf_counter()
    for _ in range(n):
        out = next(it)
        _ = [np.asarray(o) if not hasattr(o, "numpy") else o.numpy() for o in out]
    return n * batch / (time.perf_counter() - t)


def default_stream(batches: int = 40) -> None:
    import jax

    from configs import default
    from clipjax import sharding as shd
    from clipjax.data.pipeline import make_train_data
    from clipjax.tasks.clip import model_config

    c = default.get_config()
    cfg = model_config(c)
    data = make_train_data(c, cfg, shd.make_mesh({"data": -1}), shd.DEFAULT_RULES)
    jax.block_until_ready([next(data) for _ in range(3)])  # start-up, dataset build
    t = time.perf_counter()
    jax.block_until_ready([next(data) for _ in range(batches)])
    rate = batches * c.batch_size / (time.perf_counter() - t)
    print(f"configs/default.py stream: {cfg.vision.image_size} px, batch {c.batch_size}: {rate:.0f} images/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--default-config", action="store_true", help="time configs/default.py's training stream")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    if args.default_config:
        return default_stream()

    folder = tempfile.mkdtemp(prefix="clipjax-bench-")
    index = make_images(folder, args.images)
    with open(index) as f:
        rows = [(r["filepath"], r["title"]) for r in csv.DictReader(f)]
    # fresh iterators every round, so no pipeline banks prefetched batches while another runs
    makers = {
        "clipjax tf.data (TFDS path)": lambda: clipjax_stream(index, folder, args.batch_size, via_collection=False),
        "clipjax tf.data (collection)": lambda: clipjax_stream(index, folder, args.batch_size, via_collection=True),
        f"torch DataLoader ({args.workers} workers)": lambda: torch_loader(folder, rows, args.batch_size, args.workers),
    }
    results = {k: [] for k in makers}
    for _ in range(args.rounds):
        for name, make in makers.items():
            it = make()
            results[name].append(time_batches(it, args.batches, args.batch_size))
            del it
    base = statistics.median(results[f"torch DataLoader ({args.workers} workers)"])
    print(f"cores: {os.cpu_count()}, images: {args.images} JPEGs 300-640 px, batch {args.batch_size}, "
          f"{args.batches} batches x {args.rounds} rounds (median)")
    print(f"{'pipeline':<34} {'images/s':>9} {'vs torch':>9}")
    for name, v in results.items():
        m = statistics.median(v)
        print(f"{name:<34} {m:9.1f} {m / base:8.2f}x")


if __name__ == "__main__":
    main()
