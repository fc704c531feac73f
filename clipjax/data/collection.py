"""A user's own image-text collection: CSV / TSV / JSONL index files, or webdataset tar shards.

Design: a streaming *reader*, not a TFDS builder. A builder would copy the whole collection
into TFRecords before the first step (doubling the disk for a LAION-sized set, and redoing it
whenever a caption changes); the reader streams the user's files as they are, shards them
across processes (`shard_index`, `num_shards`: whole tar shards per process when there are
enough shards, else every num_shards-th example), decodes with PIL through
`clipjax.data.images` (which handles CMYK, 16-bit, palette, alpha, truncated and corrupt files
that `tf.io.decode_image` does not), and counts what it converted or skipped in `counts`.
`as_tf_dataset()` wraps it in `tf.data.Dataset.from_generator` for the tf.data pipeline.
For a collection that must be read many epochs at high rate, `write_webdataset` can be used to
re-pack it once into clean shards.

Index files (format from the extension: .csv, .tsv, .jsonl / .json lines):
  image_key   (default "filepath", open_clip's --csv-img-key): path relative to the index
              file's directory (or `image_root`), or absolute
  caption_key (default "title", open_clip's --csv-caption-key)
  tags_key    (default "tags", optional): a JSON list, or a string split on '|' or ','
Tar shards (`glob` of .tar files, webdataset layout): members grouped by key (the name up to
  the first '.' of the basename): NNNNN.{jpg,jpeg,png,webp,bmp,gif,tif,tiff} the image,
  NNNNN.txt (or .caption) the caption, NNNNN.json optional {"caption": ..., "tags": [...]}.

Each example: {"image": uint8 (H, W, 3), "caption": str, "tags": list[str], "key": str}.
A collection with no usable example raises NoUsableExamplesError when it is opened
(validate=True scans until the first usable example).

Paths: a row's image path is relative to the index's directory (or `image_root`), or
absolute, as open_clip reads them. `confine=True` (for indexes written by other people)
refuses a path that is absolute, contains `..`, or resolves (symlinks followed) outside the
root; such rows are counted as skipped_outside_root and never opened.

Hostile files stay cheap: only regular files are opened and files or tar members over
`max_bytes` are skipped unread (clipjax.data.images.read_file); an example that was skipped
once is counted once and not read again in later epochs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator, Sequence

import numpy as np

from clipjax import storage
from clipjax.errors import ConfigError
from clipjax.data.images import (
    DEFAULT_MAX_CAPTION_CHARS,
    MAX_FILE_BYTES,
    Counts,
    NoUsableExamplesError,
    clean_caption,
    decode_image,
    parse_tags,
    read_file,
)

_TOO_LARGE = object()  # stands for a tar member over max_bytes, never read
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
INDEX_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
TAR_EXTS = (".tar", ".tar.gz", ".tgz")


def _expand(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Files of the source: each item a path, URL (gs://, s3://), glob or brace pattern."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    paths: list[str] = []
    for item in items:
        try:
            paths.extend(storage.expand(os.fspath(item)))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"collection file not found: {e}") from None
    if not paths:
        raise FileNotFoundError(f"no collection files in {source!r}")
    return paths


def _kind(path: str) -> str:
    low = path.lower()
    if low.endswith(TAR_EXTS):
        return "tar"
    if low.endswith(".tsv"):
        return "tsv"
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise ValueError(f"{path}: unknown collection format; use one of {INDEX_EXTS + TAR_EXTS}")


class ImageTextCollection:
    """Iterable of decoded {"image", "caption", "tags", "key"} dicts; see the module doc."""

    def __init__(self, source, *, image_key: str = "filepath", caption_key: str = "title",
                 tags_key: str | None = "tags", image_root: str | None = None,
                 delimiter: str | None = None, max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
                 shard_index: int = 0, num_shards: int = 1, validate: bool = True,
                 max_bytes: int = MAX_FILE_BYTES, confine: bool = False):
        self.paths = _expand(source)
        kinds = {_kind(p) for p in self.paths}
        if "tar" in kinds and len(kinds) > 1:
            raise ValueError("mix of tar shards and index files; open them as two collections")
        self.is_tar = kinds == {"tar"}
        self.image_key, self.caption_key, self.tags_key = image_key, caption_key, tags_key
        self.image_root = image_root
        self.delimiter = delimiter
        self.max_caption_chars = int(max_caption_chars)
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        self.shard_index, self.num_shards = int(shard_index), int(num_shards)
        self.max_bytes = int(max_bytes)
        self.confine = bool(confine)
        self.counts = Counts()
        self._skipped: set[str] = set()  # keys of examples skipped (and counted) once already
        if not self.is_tar:
            for p in self.paths:
                self._check_columns(p)
        if validate:
            probe = Counts()
            if next(self._examples(probe), None) is None:
                raise NoUsableExamplesError(
                    f"no usable image-text example in {', '.join(self.paths[:5])}"
                    f"{' ...' if len(self.paths) > 5 else ''} "
                    f"(shard {self.shard_index}/{self.num_shards}): {probe}")

    # ------------------------------------------------------------------ public
    def __iter__(self) -> Iterator[dict]:
        return self._examples(self.counts)

    def as_tf_dataset(self, transform=None):
        """tf.data.Dataset of {"image": uint8 (None, None, 3), "caption": string,
        "tags": string (None,)}; counts keep accumulating in self.counts.

        `transform(image, key, epoch) -> uint8 image` runs here, before anything downstream
        (a shuffle buffer) holds the example: training passes its random resized crop, so a
        buffer holds model-sized crops, never full-resolution photos. `epoch` counts the passes
        tf.data made over the collection (each `repeat` calls the generator again)."""
        import tensorflow as tf

        passes = [0]

        def gen():
            epoch, passes[0] = passes[0], passes[0] + 1
            for ex in self._examples(self.counts):
                if transform is not None:
                    ex = {**ex, "image": transform(ex["image"], ex["key"], epoch)}
                yield {"image": ex["image"], "caption": ex["caption"],
                       "tags": np.asarray(ex["tags"], dtype=object).astype(bytes)
                       if ex["tags"] else np.zeros((0,), dtype=bytes)}

        return tf.data.Dataset.from_generator(gen, output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "caption": tf.TensorSpec((), tf.string),
            "tags": tf.TensorSpec((None,), tf.string),
        })

    # ------------------------------------------------------------------ internals
    def _examples(self, counts: Counts) -> Iterator[dict]:
        """Usable examples; with the collection's own counts, each skipped example is counted
        the first time and passed over unread after that (a probe's counts see everything)."""
        skipped = self._skipped if counts is self.counts else set()
        for key, ex in self._candidates(counts, skipped):
            if ex is None:
                skipped.add(key)
            else:
                yield ex

    def _candidates(self, counts: Counts, skipped: set) -> Iterator[tuple[str, dict | None]]:
        """(key, example or None when skipped) for every example of this shard not in `skipped`."""
        if self.is_tar:
            per_shard = len(self.paths) >= self.num_shards
            for i, path in enumerate(self.paths):
                if per_shard and i % self.num_shards != self.shard_index:
                    continue
                yield from self._tar_examples(path, counts, not per_shard, skipped)
        else:
            for path in self.paths:
                yield from self._index_examples(path, counts, skipped)

    def _mine(self, n: int, per_example: bool = True) -> bool:
        return not per_example or n % self.num_shards == self.shard_index

    def _make(self, key, image_bytes, raw_caption, raw_tags, counts):
        # Caption first: it is cheap, and a skipped caption saves decoding the image.
        caption = clean_caption(raw_caption, counts, self.max_caption_chars)
        if caption is None:
            return None
        image = decode_image(image_bytes, counts)
        if image is None:
            return None
        counts.decoded += 1
        return {"image": image, "caption": caption, "tags": parse_tags(raw_tags, counts),
                "key": str(key)}

    # index files ------------------------------------------------------------------------
    def _rows(self, path: str):
        kind = _kind(path)
        if kind == "jsonl":
            with storage.open(path, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line.decode("utf-8", "surrogateescape"))
                    except ValueError:
                        row = None
                    yield row if isinstance(row, dict) else None
            return
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        delim = self.delimiter or ("\t" if kind == "tsv" else ",")
        with storage.open(path, "rb") as raw, io.TextIOWrapper(
                raw, encoding="utf-8", errors="surrogateescape", newline="") as f:
            yield from csv.DictReader(f, delimiter=delim)

    def _check_columns(self, path: str):
        for row in self._rows(path):
            if row is None:
                continue
            missing = [k for k in (self.image_key, self.caption_key) if k not in row]
            if missing:
                raise ConfigError(f"{path}: no column(s) {missing}; columns are {sorted(row)}. "
                                 "Set image_key= / caption_key= to the names used (evaluate.py --image-key / "
                                 "--caption-key; training: config.data.collection_kwargs).")
            return

    def _index_examples(self, path: str, counts: Counts, skipped: set):
        root = self.image_root or storage.dirname(storage.normalize(path))
        for n, row in enumerate(self._rows(path)):
            key = f"{path}:{n}"
            if not self._mine(n) or key in skipped:
                continue
            yield key, self._index_example(key, row, root, counts)

    def _index_example(self, key: str, row, root: str, counts: Counts):
        if row is None:
            counts.skipped_bad_record += 1
            return None
        rel = row.get(self.image_key)
        if not isinstance(rel, str) or not rel.strip():
            counts.skipped_missing += 1
            return None
        rel = rel.strip()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if self.confine and not inside(root, rel):
            counts.skipped_outside_root += 1
            return None
        img_path = rel if os.path.isabs(rel) or storage.is_remote(rel) else storage.join(root, rel)
        raw_caption = row.get(self.caption_key)
        if isinstance(raw_caption, (list, dict)):  # JSON structure where a caption belongs: not text
            counts.skipped_bad_record += 1
            return None
        if raw_caption is not None and not isinstance(raw_caption, (str, bytes)):
            raw_caption = str(raw_caption)  # a number
        raw_tags = row.get(self.tags_key) if self.tags_key else None
        if isinstance(raw_tags, str) and raw_tags.strip().startswith("["):
            try:
                raw_tags = json.loads(raw_tags)
            except ValueError:
                pass
        # Skip an empty caption before touching the image file.
        if clean_caption(raw_caption, Counts(), self.max_caption_chars) is None:
            counts.skipped_empty_caption += 1
            return None
        data = read_file(img_path, counts, self.max_bytes)  # counted when missing, not a file, too large
        if data is None:
            return None
        return self._make(key, data, raw_caption, raw_tags, counts)

    # tar shards --------------------------------------------------------------------------
    def _tar_examples(self, path: str, counts: Counts, per_example: bool, skipped: set):
        group_key, group, n = None, {}, 0

        def flush():
            """(key, example or None) of the group just read, or None when not this shard's."""
            nonlocal n
            if group_key is None:
                return None
            mine = self._mine(n, per_example)
            n += 1
            key = f"{path}:{group_key}"
            if not mine or key in skipped:
                return None
            return key, self._tar_group(path, group_key, group, counts)

        try:
            with storage.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    if "." not in base or base.startswith("."):
                        continue
                    key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                    ext = base.split(".", 1)[1].lower()
                    if key != group_key:
                        ex = flush()
                        if ex is not None:
                            yield ex
                        group_key, group = key, {}
                    if member.size > self.max_bytes:  # never read into memory (the stream skips it)
                        group[ext] = _TOO_LARGE
                        continue
                    f = tar.extractfile(member)
                    group[ext] = f.read(self.max_bytes + 1) if f is not None else None
                ex = flush()
                if ex is not None:
                    yield ex
        except (tarfile.TarError, EOFError, OSError, ValueError):
            # Truncated or corrupt shard: what was read before stays; the partial group and
            # the rest of the shard are counted as one bad record.
            counts.skipped_bad_record += 1

    def _tar_group(self, path, key, group: dict, counts: Counts):
        if any(v is _TOO_LARGE for v in group.values()):
            counts.skipped_too_large += 1
            return None
        meta = {}
        if "json" in group and group["json"] is not None:
            try:
                meta = json.loads(group["json"].decode("utf-8", "replace"))
                if not isinstance(meta, dict):
                    meta = {}
            except ValueError:
                meta = {}
        raw_caption = group.get("txt", group.get("caption"))
        if raw_caption is None:
            raw_caption = meta.get("caption")
        raw_tags = meta.get("tags", group.get("tags"))
        image_bytes = next((group[e] for e in IMAGE_EXTS if e in group), None)
        if isinstance(raw_caption, (list, dict)):  # JSON structure where a caption belongs: not text
            counts.skipped_bad_record += 1
            return None
        if clean_caption(raw_caption, Counts(), self.max_caption_chars) is None:
            counts.skipped_empty_caption += 1
            return None
        if image_bytes is None:
            counts.skipped_missing += 1
            return None
        return self._make(f"{path}:{key}", image_bytes, raw_caption, raw_tags, counts)


def inside(root: str, rel: str) -> bool:
    """Whether the relative path `rel` names a file under `root` (no absolute path, no `..`
    part, and after following symlinks still under the real root)."""
    if os.path.isabs(rel) or storage.is_remote(rel) or ".." in rel.replace("\\", "/").split("/"):
        return False
    if storage.is_remote(root):  # no symlinks on an object store
        return True
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, rel))
    return os.path.commonpath([real_root, real]) == real_root


def collection_from_config(data_config, source=None) -> ImageTextCollection:
    """The collection config.data describes: `source` (default config.data.source),
    `collection_kwargs` (image_key, caption_key, image_root, ...) and `confine_paths`."""
    source = source or data_config.get("source", None)
    if not source:
        raise ConfigError('config.data.source is required for data.name="collection"')
    kwargs = dict(data_config.get("collection_kwargs", None) or {})
    kwargs.setdefault("confine", bool(data_config.get("confine_paths", False)))
    return ImageTextCollection(source, **kwargs)


def open_collection(source, **kwargs) -> ImageTextCollection:
    """ImageTextCollection(source, **kwargs): index file(s) or a glob of tar shards."""
    return ImageTextCollection(source, **kwargs)


def write_webdataset(examples, path: str, *, quality: int = 95) -> int:
    """Write decoded examples ({"image", "caption"[, "tags"]}) to one tar shard as
    NNNNN.jpg / NNNNN.txt / NNNNN.json; returns the number written."""
    from PIL import Image

    n = 0
    with tarfile.open(path, "w") as tar:
        for n, ex in enumerate(examples, 1):
            key = f"{n - 1:06d}"
            buf = io.BytesIO()
            Image.fromarray(ex["image"]).save(buf, format="JPEG", quality=quality)
            files = {"jpg": buf.getvalue(), "txt": ex["caption"].encode("utf-8")}
            if ex.get("tags"):
                files["json"] = json.dumps({"tags": list(ex["tags"])}).encode("utf-8")
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return n
