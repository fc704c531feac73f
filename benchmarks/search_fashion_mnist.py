"""Search on real data: the Fashion-MNIST test split (10,000 images) indexed with the
Fashion-MNIST CLIP (configs/clip_fashion_mnist.py), then

- text search precision@10 per class: the query "a photo of a {class}", P@10 = the share of
  the 10 results whose label is the class;
- reverse image search mAP@10 by class: every test image queries the index (itself left
  out); AP@10 = (1/10) Σ_{k≤10} P@k·rel_k (every class has 1,000 test images, so 10 relevant
  results exist), averaged over the queries of each class and over all;
- a contact sheet of one text query and timing of the build.

    python benchmarks/search_fashion_mnist.py --checkpoint runs/fmnist --index runs/fmnist_test.index \
        --output runs/search_fashion_mnist.json --sheet docs/images/search_fmnist_sneaker.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--output")
    ap.add_argument("--sheet")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    from clipjax import search
    from clipjax.search import ann

    emb = search.Embedder(args.checkpoint, batch_size=args.batch)
    t0 = time.perf_counter()
    summary = search.build_index(emb, "tfds:fashion_mnist:test", args.index, batch_size=args.batch)
    build_s = time.perf_counter() - t0
    idx = search.SearchIndex.open(args.index, emb)
    meta = idx.store.metadata()
    classes = sorted({m["caption"] for m in meta}, key=lambda c: [m["caption"] for m in meta].index(c))
    labels = np.asarray([m["caption"] for m in meta])
    out = {"rows": len(idx), "build_s_this_run": round(build_s, 1), "added_this_run": summary["added"],
           "faiss": summary["faiss"], "checkpoint": idx.store.manifest["checkpoint"]}
    # text search precision@10 per class
    p10 = {}
    for c in classes:
        res = idx.search(text=f"a photo of a {c}", k=10)
        p10[c] = float(np.mean([labels[r.id] == c for r in res]))
    out["text_precision_at_10"] = p10
    out["text_precision_at_10_mean"] = float(np.mean(list(p10.values())))
    # reverse image search mAP@10 by class
    e = idx.store.embeddings()
    scores, ids = ann.search(idx.faiss, e, 11)
    ap10 = np.zeros(len(e))
    for i in range(len(e)):
        row = [j for j in ids[i] if j != i][:10]
        rel = np.asarray([labels[j] == labels[i] for j in row], np.float64)
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        ap10[i] = float((prec * rel).sum() / 10)
    out["image_map_at_10"] = {c: float(ap10[labels == c].mean()) for c in classes}
    out["image_map_at_10_mean"] = float(ap10.mean())
    # one query's latency end to end (text encoding + FAISS), 50 repeats after a warm-up
    idx.search(text="a photo of a sneaker", k=10)
    lat = []
    for i in range(50):
        t = time.perf_counter()
        idx.search(text=f"a photo of a {classes[i % len(classes)]}", k=10)
        lat.append(time.perf_counter() - t)
    out["text_query_ms_p50"] = round(float(np.percentile(lat, 50) * 1e3), 2)
    out["text_query_ms_p99"] = round(float(np.percentile(lat, 99) * 1e3), 2)
    if args.sheet:
        res = idx.search(text="a photo of a sneaker", k=10)
        search.contact_sheet([idx.store.thumbnail_image(r.id) for r in res],
                             [f"#{r.rank} | {r.score:.3f}\n{r.caption}" for r in res], args.sheet,
                             title='Fashion-MNIST test, "a photo of a sneaker"', cell=110)
    print(json.dumps(out, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
