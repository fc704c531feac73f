"""Building an index (resumable, appendable) and searching it.

    build_index(checkpoint, source, directory)      embed a source (see sources.py) into DIR;
                                                     a re-run continues where one stopped
    add_images(directory, source, checkpoint)        append another source to DIR
    SearchIndex.open(directory, checkpoint)          refuses a checkpoint other than DIR's
      .search(text=..., image=..., weight=..., k=)   text, reverse image, or a weighted mix
      .duplicates(threshold)                         groups of near-duplicate rows
    rank(checkpoint, text, images)                   given images ordered by a description
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

import numpy as np

from clipjax.data.images import Counts
from clipjax.search import ann, sources
from clipjax.search.embedder import Embedder, check_identity
from clipjax.search.store import IndexStore, thumbnail_jpeg

SHARD_ROWS = 1024  # rows per committed embedding shard: an interruption loses at most this much


def _embedder(checkpoint, batch_size: int) -> Embedder:
    return checkpoint if isinstance(checkpoint, Embedder) else Embedder(checkpoint, batch_size)


def build_index(checkpoint, source: str, directory: str, *, batch_size: int = 64, shard_rows: int = SHARD_ROWS,
                threshold: int = ann.DEFAULT_THRESHOLD, kind: str = "auto", progress: bool = True,
                stop_after: Optional[int] = None, caption_key: str = "title", image_key: str = "filepath") -> dict:
    """Embed `source` into the index at `directory` (created when new; continued when it holds
    an unfinished run of the same source; refused when built with another checkpoint), then
    (re)build its FAISS index. Returns a summary: rows, added, skipped counts, faiss info.

    `stop_after`: stop after committing this many new rows (for tests of resumption)."""
    emb = _embedder(checkpoint, batch_size)
    if IndexStore.exists(directory):
        store = IndexStore.open(directory)
        check_identity(directory, store.manifest["checkpoint"], emb.identity)
    else:
        store = IndexStore.create(directory, emb.identity)
    sid = store.source_index(source)
    added = 0
    if not store.manifest["sources"][sid]["complete"]:
        added = _embed_source(emb, store, sid, source, batch_size, shard_rows, progress, stop_after,
                              caption_key, image_key)
    return finish(store, threshold, kind) | {"added": added}


def add_images(directory: str, source: str, checkpoint, **kwargs) -> dict:
    """Append `source` to an existing index (which must have been built with `checkpoint`)."""
    if not IndexStore.exists(directory):
        raise FileNotFoundError(f"{directory} is not a search index; build it with `search.py index` first")
    return build_index(checkpoint, source, directory, **kwargs)


def finish(store: IndexStore, threshold: int = ann.DEFAULT_THRESHOLD, kind: str = "auto") -> dict:
    """Build and write the FAISS index unless the manifest's is current."""
    info = store.manifest.get("faiss")
    path = os.path.join(store.dir, "index.faiss")
    if not info or info.get("n") != len(store) or not os.path.isfile(path):
        index, info = ann.build(store.embeddings(), threshold, kind)
        ann.write(index, path)
        store.manifest["faiss"] = info
        store.save_manifest()
    return {"rows": len(store), "counts": dict(store.manifest["counts"]), "faiss": info,
            "sources": store.manifest["sources"]}


def _embed_source(emb: Embedder, store: IndexStore, sid: int, source: str, batch_size: int, shard_rows: int,
                  progress: bool, stop_after: Optional[int], caption_key: str, image_key: str) -> int:
    from tqdm import tqdm

    done = store.done_keys(sid)
    total = sources.count(source)
    bar = tqdm(total=total, initial=len(done) if total else 0, desc=f"indexing {source}", unit="img",
               disable=not progress, file=sys.stderr)
    counts = Counts()
    pending: list[sources.Item] = []  # usable items not yet encoded
    rows, vecs, thumbs, skipped = [], [], [], []
    committed = 0
    reported: dict[str, int] = {}  # counts already committed with an earlier shard

    def encode_pending():
        if pending:
            vecs.append(emb.encode_images([it.image for it in pending]))
            for it in pending:
                h, w = it.image.shape[:2]
                rows.append({"key": it.key, "path": it.path, "caption": it.caption, "size": [int(w), int(h)],
                             "source": sid})
                thumbs.append(thumbnail_jpeg(it.image))
            pending.clear()

    def commit():
        nonlocal committed
        encode_pending()
        if not rows and not skipped:
            return
        e = np.concatenate(vecs) if vecs else np.zeros((0, emb.embed_dim), np.float32)
        now = counts.as_dict()
        store.append_shard(e, list(rows), list(thumbs), list(skipped),
                           {k: v - reported.get(k, 0) for k, v in now.items()})
        reported.update(now)
        committed += len(rows)
        rows.clear(), vecs.clear(), thumbs.clear(), skipped.clear()

    stopped = False
    for it in sources.items(source, done, counts, caption_key=caption_key, image_key=image_key):
        if it.image is None:
            skipped.append((sid, it.key))
        else:
            pending.append(it)
            if len(pending) >= batch_size:
                encode_pending()
        bar.update(1)
        if len(rows) + len(pending) >= shard_rows:
            commit()
            if stop_after is not None and committed >= stop_after:
                stopped = True
                break
    if not stopped:
        commit()
        store.manifest["sources"][sid]["complete"] = True
        store.save_manifest()
    bar.close()
    return committed


@dataclasses.dataclass
class Result:
    rank: int
    score: float
    id: int
    key: str
    path: str
    caption: str
    size: list

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class SearchIndex:
    """An index opened for queries with the checkpoint that built it."""

    def __init__(self, store: IndexStore, embedder: Optional[Embedder]):
        self.store = store
        self.embedder = embedder
        finish(store)
        self.faiss = ann.read(os.path.join(store.dir, "index.faiss"))

    @classmethod
    def open(cls, directory: str, checkpoint=None, batch_size: int = 64) -> "SearchIndex":
        """`checkpoint` None opens the index for queries by embedding only (duplicates)."""
        store = IndexStore.open(directory)
        emb = None
        if checkpoint is not None:
            emb = _embedder(checkpoint, batch_size)
            check_identity(directory, store.manifest["checkpoint"], emb.identity)
        return cls(store, emb)

    def __len__(self) -> int:
        return len(self.store)

    def query_vector(self, text: Optional[str] = None, image=None, weight: float = 0.5) -> np.ndarray:
        """The normalised query: a text's embedding, an image's, or (both given) the normalised
        `weight * text + (1 - weight) * image`."""
        if self.embedder is None:
            raise ValueError("this index was opened without a checkpoint: text and image queries need one")
        if text is None and image is None:
            raise ValueError("give a text, an image, or both")
        parts = []
        if text is not None:
            parts.append((weight if image is not None else 1.0, self.embedder.encode_texts([text])[0]))
        if image is not None:
            parts.append((1.0 - weight if text is not None else 1.0, self.embedder.encode_query_images([image])[0]))
        q = sum(w * v for w, v in parts)
        return (q / max(np.linalg.norm(q), 1e-12)).astype(np.float32)

    def search_vectors(self, q: np.ndarray, k: int = 10) -> list[list[Result]]:
        if len(self) == 0:
            return [[] for _ in range(len(q))]
        scores, ids = ann.search(self.faiss, np.atleast_2d(q), k)
        meta = self.store.metadata()
        out = []
        for srow, irow in zip(scores, ids):
            res = []
            for s, i in zip(srow, irow):
                if i < 0:
                    continue
                m = meta[int(i)]
                res.append(Result(len(res) + 1, float(s), int(i), m["key"], m["path"], m["caption"], m["size"]))
            out.append(res)
        return out

    def search(self, text: Optional[str] = None, image=None, weight: float = 0.5, k: int = 10) -> list[Result]:
        return self.search_vectors(self.query_vector(text, image, weight)[None], k)[0]

    def duplicates(self, threshold: float = 0.95) -> list[list[dict]]:
        """Groups (connected components) of rows whose cosine similarity is >= threshold to
        another row of the group; each group sorted by id, groups by their first id."""
        emb = self.store.embeddings()
        n = len(emb)
        if n < 2:
            return []
        lims, scores, ids = ann.neighbours_within(self.faiss, emb, threshold)
        parent = list(range(n))

        def find(a):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for i in range(n):
            for j in ids[lims[i]:lims[i + 1]]:
                if j >= 0 and j != i:
                    ra, rb = find(i), find(int(j))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for i in range(n):
            groups.setdefault(find(i), []).append(i)
        meta = self.store.metadata()
        out = []
        for members in sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0]):
            first = emb[members[0]]
            out.append([{"id": i, "key": meta[i]["key"], "path": meta[i]["path"],
                         "similarity_to_first": float(emb[i] @ first)} for i in members])
        return out


def rank(checkpoint, text: str, images: Sequence, batch_size: int = 64,
         names: Optional[Sequence[str]] = None) -> list[dict]:
    """`images` (paths, PIL images or arrays) ordered by cosine similarity to `text`, best
    first: [{"rank", "score", "index", "name"}]."""
    emb = _embedder(checkpoint, batch_size)
    t = emb.encode_texts([text])[0]
    v = emb.encode_query_images(list(images))
    scores = v @ t
    order = np.argsort(-scores, kind="stable")
    names = list(names) if names is not None else [str(x) if isinstance(x, (str, os.PathLike)) else f"#{i}"
                                                   for i, x in enumerate(images)]
    return [{"rank": r + 1, "score": float(scores[i]), "index": int(i), "name": names[i]} for r, i in enumerate(order)]

