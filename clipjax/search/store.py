"""An index directory on disk: embeddings in shards, metadata beside them, one manifest.

    DIR/manifest.json        checkpoint identity (path, fingerprint, embedding width), the shards,
                             the sources and whether each is complete, keys skipped as bad,
                             the skip counts, the FAISS index's kind and measured recall
    DIR/shards/NNNNN.npy     float32 (n, d) L2-normalised image embeddings
    DIR/shards/NNNNN.jsonl   one line per row: key, path, caption, size [w, h], source, thumb
    DIR/shards/NNNNN.thumbs  the rows' JPEG thumbnails, concatenated (thumb: [offset, length])
    DIR/index.faiss          the FAISS index over every shard, rows in shard order

A shard's files are written first, the manifest (naming it) last, each by write-then-rename:
an interrupted run leaves at most one unnamed shard behind, which the next run overwrites.
The manifest is the commit point, so a re-run continues after the last shard it names.
"""

from __future__ import annotations

import io
import json
import os
from typing import Optional

import numpy as np
from PIL import Image

VERSION = 1
THUMB = 160  # thumbnail's longer side, pixels


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def thumbnail_jpeg(image: np.ndarray, size: int = THUMB) -> bytes:
    img = Image.fromarray(np.asarray(image, np.uint8))
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class IndexStore:
    def __init__(self, directory: str, manifest: dict):
        self.dir = directory
        self.manifest = manifest
        self._emb: Optional[np.ndarray] = None
        self._meta: Optional[list[dict]] = None

    # ------------------------------------------------------------------ open / create
    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.isfile(os.path.join(directory, "manifest.json"))

    @classmethod
    def open(cls, directory: str) -> "IndexStore":
        path = os.path.join(directory, "manifest.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} is not a search index (no manifest.json); build one with "
                                    "`search.py index`")
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("version") != VERSION:
            raise ValueError(f"{directory}: index version {manifest.get('version')} is not {VERSION}")
        return cls(directory, manifest)

    @classmethod
    def create(cls, directory: str, ident: dict) -> "IndexStore":
        os.makedirs(os.path.join(directory, "shards"), exist_ok=True)
        store = cls(directory, {"version": VERSION, "checkpoint": ident, "embed_dim": ident["embed_dim"],
                                "shards": [], "sources": [], "skipped_keys": [], "counts": {}, "faiss": None})
        store.save_manifest()
        return store

    def save_manifest(self) -> None:
        _atomic_write(os.path.join(self.dir, "manifest.json"),
                      json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    # ------------------------------------------------------------------ writing
    def source_index(self, source: str) -> int:
        """The number of `source` in the manifest (added, incomplete, when new)."""
        for i, s in enumerate(self.manifest["sources"]):
            if s["source"] == source:
                return i
        self.manifest["sources"].append({"source": source, "complete": False})
        self.save_manifest()
        return len(self.manifest["sources"]) - 1

    def done_keys(self, source_id: int) -> set[str]:
        keys = {m["key"] for m in self.metadata() if m["source"] == source_id}
        keys |= {k for s, k in self.manifest["skipped_keys"] if s == source_id}
        return keys

    def append_shard(self, emb: np.ndarray, rows: list[dict], thumbs: list[bytes],
                     skipped: list[tuple[int, str]], counts: dict) -> None:
        """Commit one shard: its files, then the manifest naming it (with the skipped keys and
        counts of the items it covers)."""
        name = f"{len(self.manifest['shards']):05d}"
        base = os.path.join(self.dir, "shards", name)
        offs, blob = 0, io.BytesIO()
        for row, t in zip(rows, thumbs):
            row["thumb"] = [offs, len(t)]
            blob.write(t)
            offs += len(t)
        if len(rows):
            buf = io.BytesIO()
            np.save(buf, np.asarray(emb, np.float32))
            _atomic_write(base + ".npy", buf.getvalue())
            _atomic_write(base + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
            _atomic_write(base + ".thumbs", blob.getvalue())
            self.manifest["shards"].append({"name": name, "n": len(rows)})
        self.manifest["skipped_keys"].extend([list(s) for s in skipped])
        total = self.manifest["counts"]
        for k, v in counts.items():
            total[k] = total.get(k, 0) + int(v)
        self.manifest["faiss"] = None  # stale until rebuilt
        self.save_manifest()
        if self._emb is not None and len(rows):
            self._emb = np.concatenate([self._emb, np.asarray(emb, np.float32)])
        if self._meta is not None:
            start = len(self._meta)
            for i, r in enumerate(rows):
                self._meta.append({**r, "id": start + i, "shard": name})

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(s["n"] for s in self.manifest["shards"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def embeddings(self) -> np.ndarray:
        if self._emb is None:
            parts = [np.load(os.path.join(self.dir, "shards", s["name"] + ".npy")) for s in self.manifest["shards"]]
            self._emb = (np.concatenate(parts) if parts else np.zeros((0, self.embed_dim), np.float32)).astype(np.float32)
        return self._emb

    def metadata(self) -> list[dict]:
        if self._meta is None:
            meta = []
            for s in self.manifest["shards"]:
                with open(os.path.join(self.dir, "shards", s["name"] + ".jsonl")) as f:
                    for line in f:
                        meta.append({**json.loads(line), "id": len(meta), "shard": s["name"]})
            self._meta = meta
        return self._meta

    def thumbnail(self, i: int) -> bytes:
        m = self.metadata()[i]
        off, n = m["thumb"]
        with open(os.path.join(self.dir, "shards", m["shard"] + ".thumbs"), "rb") as f:
            f.seek(off)
            return f.read(n)

    def thumbnail_image(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self.thumbnail(i))).convert("RGB")
