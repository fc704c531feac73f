"""Index build throughput: `clipjax.search.build_index` against a PyTorch baseline doing the same
job (transformers CLIPModel of the same size, random weights, fp32: read the JPEGs, CLIP's
preprocessing, image features in batches, L2-normalise, faiss-cpu IndexFlatIP.add), on the
same files, in one run, reported as a ratio. Then query latency of the FAISS index at 10k and
100k rows (exact and HNSW, one query at a time) with the recall@10 of HNSW.

    python benchmarks/search_throughput.py --images 256 --preset ViT-B/32 --output runs/search_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_images(d: str, n: int) -> list[str]:
    """n distinct JPEGs (random crops of the scikit-image photos, 256-640 px)."""
    from PIL import Image
    from skimage import data as skd

    base = [getattr(skd, k)() for k in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                        "immunohistochemistry", "retina", "colorwheel")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = base[i % len(base)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        p = os.path.join(d, f"{i:05d}.jpg")
        Image.fromarray(img[y:y + ch, x:x + cw]).save(p, quality=90)
        paths.append(p)
    return paths


def torch_baseline(paths, preset: str, batch: int) -> tuple[float, int]:
    import faiss
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    import clipjax

    cfg = clipjax.get_preset(preset)
    hf = CLIPConfig(
        text_config=dict(hidden_size=cfg.text.width, num_hidden_layers=cfg.text.layers,
                         num_attention_heads=cfg.text.heads, intermediate_size=cfg.text.mlp_dim),
        vision_config=dict(hidden_size=cfg.vision.width, num_hidden_layers=cfg.vision.layers,
                           num_attention_heads=cfg.vision.heads, intermediate_size=cfg.vision.mlp_dim,
                           patch_size=cfg.vision.patch_size, image_size=cfg.vision.image_size),
        projection_dim=cfg.embed_dim)
    model = CLIPModel(hf).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": cfg.vision.image_size},
                              crop_size={"height": cfg.vision.image_size, "width": cfg.vision.image_size})
    index = faiss.IndexFlatIP(cfg.embed_dim)
    with torch.no_grad():  # warm-up batch
        model.get_image_features(pixel_values=proc([Image.open(paths[0]).convert("RGB")], return_tensors="pt")["pixel_values"])
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            imgs = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
            px = proc(imgs, return_tensors="pt")["pixel_values"]
            f = model.get_image_features(pixel_values=px)
            f = getattr(f, "pooler_output", f)
            f = torch.nn.functional.normalize(f, dim=-1).numpy().astype(np.float32)
            index.add(f)
    return time.perf_counter() - t0, index.ntotal


def clipjax_build(folder: str, preset: str, batch: int, warm: list[str]) -> tuple[float, int]:
    import clipjax
    from clipjax import search

    cfg = clipjax.get_preset(preset)
    clip = clipjax.LoadedCLIP(cfg, clipjax.init_variables(cfg))
    emb = search.Embedder(clip, batch_size=batch, name=f"random {preset}")
    emb.identity  # the fingerprint (hash of the weights) is computed once per checkpoint, not per image
    from PIL import Image

    emb.encode_images([np.asarray(Image.open(p).convert("RGB")) for p in warm[:batch]])  # compile
    d = tempfile.mkdtemp(prefix="search-bench-idx-")
    try:
        t0 = time.perf_counter()
        out = search.build_index(emb, folder, d, batch_size=batch, progress=False)
        return time.perf_counter() - t0, out["rows"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def query_latency(n: int, d: int, kind: str, queries: int = 200) -> dict:
    from clipjax.search import ann

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(10, n // 100), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, info = ann.build(x, kind=kind)
    q = x[rng.choice(n, queries, replace=False)] + 0.05 * rng.normal(size=(queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lat = []
    for v in q:
        t0 = time.perf_counter()
        ann.search(index, v[None], 10)  # the path a query takes (one OpenMP thread for a single query)
        lat.append(time.perf_counter() - t0)
    lat = np.asarray(lat) * 1e3
    return {"rows": n, "dim": d, "kind": kind, "build_s": info["build_s"], "recall_at_10": info.get("recall_at_10", 1.0),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}


class _Skip(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--preset", default="ViT-B/32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--output")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    d = tempfile.mkdtemp(prefix="search-bench-imgs-")
    result = {"images": args.images, "preset": args.preset, "batch": args.batch, "cpus": os.cpu_count()}
    try:
        if args.skip_throughput:
            raise _Skip
        paths = make_images(d, args.images)
        # alternate the order over two rounds so drifting load from other jobs hits both alike
        times = {"clipjax": [], "torch": []}
        for rnd in range(2):
            for who in (("clipjax", "torch") if rnd == 0 else ("torch", "clipjax")):
                if who == "clipjax":
                    t, n = clipjax_build(d, args.preset, args.batch, paths)
                else:
                    t, n = torch_baseline(paths, args.preset, args.batch)
                assert n == args.images, (who, n)
                times[who].append(t)
                print(f"round {rnd} {who}: {n / t:.1f} images/s", flush=True)
        for who, ts in times.items():
            result[f"{who}_images_per_s"] = round(args.images / min(ts), 2)
        result["ratio_clipjax_over_torch"] = round(result["clipjax_images_per_s"] / result["torch_images_per_s"], 3)
        result["rounds_s"] = times
    except _Skip:
        pass
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if not args.skip_latency:
        result["latency"] = [query_latency(n, dim, kind) for dim in (64, 512) for n in (10_000, 100_000)
                             for kind in ("flat", "hnsw")]
    print(json.dumps(result, indent=1))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
