"""The FAISS index over an index's embeddings (all nearest-neighbour work is FAISS's).

Embeddings are L2-normalised, so inner product is cosine similarity. Up to `threshold` rows
(default 200,000) the index is exact (IndexFlatIP); above it, HNSW (IndexHNSWFlat, inner
product, M=32, efConstruction 80, efSearch 128), whose recall@10 against the exact index is
measured on a sample of the rows themselves as queries when it is built and kept in the
manifest.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

DEFAULT_THRESHOLD = 200_000
HNSW_M = 32
EF_SEARCH = 128
SMALL_BATCH = 4  # query batches up to this size search on one thread
ALL_THREADS = faiss.omp_get_max_threads()


def build(emb: np.ndarray, threshold: int = DEFAULT_THRESHOLD, kind: str = "auto"):
    """(faiss index, info). kind: "auto" (flat up to `threshold` rows, else HNSW), "flat",
    "hnsw" or "ivf"."""
    emb = np.ascontiguousarray(emb, np.float32)
    n, d = emb.shape
    faiss.omp_set_num_threads(ALL_THREADS)
    if kind == "auto":
        kind = "flat" if n <= threshold else "hnsw"
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = EF_SEARCH
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        index.nprobe = max(1, nlist // 16)
    else:
        raise ValueError(f"unknown index kind {kind!r}: auto, flat, hnsw or ivf")
    if n:
        index.add(emb)
    info = {"kind": kind, "n": int(n), "build_s": round(time.perf_counter() - t0, 3)}
    if kind != "flat" and n:
        info["recall_at_10"] = recall_at_k(index, emb, k=10)
    return index, info


def recall_at_k(index, emb: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k over `queries` rows of `emb` used as queries."""
    n = len(emb)
    rng = np.random.default_rng(seed)
    q = emb[rng.choice(n, size=min(queries, n), replace=False)]
    exact = faiss.IndexFlatIP(emb.shape[1])
    exact.add(emb)
    k = min(k, n)
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got)]))


def search(index, queries: np.ndarray, k: int):
    """(scores, ids) (q, k), -1 ids dropped by the caller.

    A few queries run on one OpenMP thread: FAISS's threads per single query cost more than
    they gain when the cores are busy (measured on this 2-core machine under load: 100k x 64
    exact, p50 28 ms on 2 threads vs 2.1 ms on 1; docs/benchmarks.md); batches use them all."""
    k = max(1, min(int(k), index.ntotal))
    queries = np.ascontiguousarray(queries, np.float32)
    faiss.omp_set_num_threads(1 if len(queries) <= SMALL_BATCH else ALL_THREADS)
    return index.search(queries, k)


def neighbours_within(index, emb: np.ndarray, threshold: float, k: int = 32):
    """(lims, scores, ids) of every row's neighbours with similarity >= threshold: FAISS range
    search on an exact index, else the top-k of an approximate one filtered by the threshold."""
    emb = np.ascontiguousarray(emb, np.float32)
    faiss.omp_set_num_threads(ALL_THREADS)
    if isinstance(index, faiss.IndexFlat):
        return index.range_search(emb, float(threshold))
    scores, ids = index.search(emb, min(k, index.ntotal))
    keep = (scores >= threshold) & (ids >= 0)
    lims = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return lims, scores[keep], ids[keep]


def write(index, path: str) -> None:
    faiss.write_index(index, path)


def read(path: str):
    index = faiss.read_index(path)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = EF_SEARCH
    return index
