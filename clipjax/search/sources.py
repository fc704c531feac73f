"""What an index is built from, as one stream of items in a fixed order.

A source string is one of:
  a folder            every image file under it, recursively, in sorted path order
  an index file / glob  a CSV / TSV / JSONL collection (clipjax.data.collection)
  tar shards          a glob of webdataset .tar files (clipjax.data.collection)
  tfds:NAME:SPLIT     a prepared TFDS split (clipjax_shapes and fashion_mnist are built
                      locally); the caption of each image is its class name. Builder
                      kwargs may follow as a query: tfds:clipjax_shapes:test?image_size=32&num_test=24
  gs:// or s3:// forms of the folder / collection kinds (through clipjax.storage)

Each item: `Item(key, image or None, caption, path)`. `key` is stable across runs (the
folder-relative path, the collection's row key, "NAME:SPLIT:i"): a re-run passes over keys
already in the index without reading them (for index files and folders; tar shards must be
streamed again, their members are not re-decoded). A skipped (bad) item comes with image None
and is counted once in the `Counts` given, by clipjax.data.images' policy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Optional

import numpy as np

from clipjax import storage
from clipjax.data.collection import IMAGE_EXTS, INDEX_EXTS, TAR_EXTS, ImageTextCollection
from clipjax.data.images import MAX_FILE_BYTES, Counts, decode_image, read_file


@dataclasses.dataclass
class Item:
    key: str
    image: Optional[np.ndarray]  # uint8 (H, W, 3); None when skipped (already counted)
    caption: str = ""
    path: str = ""


def kind_of(source: str) -> str:
    """"tfds", "folder" or "collection" (index files or tar shards)."""
    if source.startswith("tfds:"):
        return "tfds"
    if storage.isdir(source):
        return "folder"
    low = source.lower()
    if low.endswith(INDEX_EXTS + TAR_EXTS) or any(c in source for c in "*?{["):
        return "collection"
    if not storage.exists(source):
        raise FileNotFoundError(f"no such image source: {source}")
    raise ValueError(f"{source}: not a folder, a CSV/TSV/JSONL collection, tar shards or tfds:NAME:SPLIT")


def folder_files(root: str) -> list[str]:
    """Image files under `root` (recursive), as paths relative to it, sorted."""
    exts = tuple("." + e for e in IMAGE_EXTS)
    if storage.is_remote(root):
        pattern = storage.join(root, "**")
        found = storage.expand(pattern, must_exist=False)
        base = storage.normalize(root).rstrip("/") + "/"
        return sorted(p[len(base):] for p in found if p.lower().endswith(exts) and p.startswith(base))
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(exts) and not name.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def count(source: str) -> Optional[int]:
    """Items of `source` when cheap to know (a folder, a TFDS split), else None."""
    kind = kind_of(source)
    if kind == "folder":
        return len(folder_files(source))
    if kind == "tfds":
        name, split, data_dir, kwargs = _tfds_parts(source)
        from clipjax.evaluation.datasets import split_size, tfds_builder

        return split_size(tfds_builder(name, data_dir, kwargs), split, None)
    return None


def items(source: str, done: set[str], counts: Counts, *, max_bytes: int = MAX_FILE_BYTES,
          caption_key: str = "title", image_key: str = "filepath") -> Iterator[Item]:
    """Every item of `source` whose key is not in `done`, in the source's order."""
    kind = kind_of(source)
    if kind == "folder":
        yield from _folder(source, done, counts, max_bytes)
    elif kind == "tfds":
        yield from _tfds(source, done)
    else:
        yield from _collection(source, done, counts, max_bytes, caption_key, image_key)


def _folder(root: str, done: set[str], counts: Counts, max_bytes: int) -> Iterator[Item]:
    for rel in folder_files(root):
        if rel in done:
            continue
        path = storage.join(root, rel) if storage.is_remote(root) else os.path.join(root, rel)
        data = read_file(path, counts, max_bytes)
        image = decode_image(data, counts) if data is not None else None
        if image is not None:
            counts.decoded += 1
        yield Item(rel, image, "", path)


def _collection(source, done, counts, max_bytes, caption_key, image_key) -> Iterator[Item]:
    coll = ImageTextCollection(source, caption_key=caption_key, image_key=image_key, validate=False,
                               max_bytes=max_bytes)
    # the collection's own walk (robust decoding, counted skips); keys already indexed are
    # passed to it as "skipped" so their images are never read again
    for key, ex in coll._candidates(counts, set(done)):  # noqa: SLF001 - the keyed walk is what a resumable index needs
        if ex is None:
            yield Item(key, None)
        else:
            yield Item(key, ex["image"], ex["caption"], key)


def _tfds_parts(source: str) -> tuple[str, str, Optional[str], dict]:
    source, _, query = source.partition("?")
    parts = source.split(":")
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise ValueError(f"{source!r}: a TFDS source is tfds:NAME:SPLIT (optionally tfds:NAME:SPLIT:DATA_DIR, "
                         "then ?key=value&... builder kwargs)")
    kwargs = {}
    for kv in filter(None, query.split("&")):
        k, _, v = kv.partition("=")
        kwargs[k] = int(v) if v.lstrip("-").isdigit() else v
    return parts[1], parts[2], (":".join(parts[3:]) or None), kwargs


def _tfds(source: str, done: set[str]) -> Iterator[Item]:
    import tensorflow_datasets as tfds

    from clipjax.evaluation.datasets import classification_info, tfds_builder

    name, split, data_dir, kwargs = _tfds_parts(source)
    builder = tfds_builder(name, data_dir, kwargs)
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    try:
        names = classification_info(builder)
    except ValueError:
        names = None
    keys = ["image"] + (["label"] if names else [])
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({k: True for k in keys}))
    # items are numbered in split order: the ones done are a prefix after an interrupted run
    prefix = f"{name}:{split}:"
    start = 0
    while f"{prefix}{start}" in done:
        start += 1
    for i, ex in enumerate(tfds.as_numpy(ds.skip(start)), start):
        key = f"{prefix}{i}"
        if key in done:
            continue
        img = np.asarray(ex["image"])
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        caption = names[int(ex["label"])] if names else ""
        yield Item(key, img.astype(np.uint8), caption, key)
