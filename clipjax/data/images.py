"""Robust decoding of untrusted images and captions, with counters.

Every function here takes a `Counts` and never raises on bad *data* (bad bytes, odd modes,
bad text): it converts what it can and returns None for what it must skip, counting either
way. Policy:

  image bytes that PIL cannot identify, or that fail to decode  -> skipped_corrupt
  truncated image files (PIL "image file is truncated")          -> skipped_truncated
  a path that does not exist / cannot be read                    -> skipped_missing
  a path that is not a regular file (a FIFO, /dev/zero, a
  directory), or a file / tar member over max_bytes (64 MiB)      -> skipped_not_a_file /
                                                                    skipped_too_large, never read
  images smaller than 2x2 or larger than MAX_PIXELS              -> skipped_corrupt
  non-RGB modes: L, LA, 1, P, PA, RGBA, CMYK, YCbCr, LAB, HSV,
  I;16 / I (16/32-bit), F (float)                                -> converted to RGB uint8
      alpha is composited over white (plain .convert("RGB") would expose whatever colour
      the transparent pixels hold, often black); 16-bit is rescaled (v / 257), not clipped;
      EXIF orientation is applied
  control characters in a caption (NUL, ...)                     -> a space each (words stay apart)
  caption bytes that are not UTF-8                               -> decoded as cp1252 (latin-1
      fallback), caption_converted_encoding; the example is kept
  captions empty after whitespace normalisation                  -> skipped_empty_caption
  captions longer than max_chars                                 -> cut at a word boundary,
      truncated_caption; the example is kept
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import stat
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipjax import storage
from clipjax.preprocess import pil_to_rgb_array

MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit
MAX_FILE_BYTES = 64 * 2**20  # an image file (or tar member) larger than this is skipped unread
DEFAULT_MAX_CAPTION_CHARS = 1000


class NoUsableExamplesError(ValueError):
    """A data source produced not one usable example."""


@dataclasses.dataclass
class Counts:
    decoded: int = 0  # examples produced (image + caption both usable)
    converted: int = 0  # images converted from another mode / bit depth to RGB uint8
    skipped_corrupt: int = 0
    skipped_truncated: int = 0
    skipped_missing: int = 0
    skipped_empty_caption: int = 0
    skipped_bad_record: int = 0  # unparsable index line / tar member group / unreadable shard
    skipped_not_a_file: int = 0  # a path to a FIFO, device, directory, ...: never opened
    skipped_too_large: int = 0  # a file / tar member over the byte cap: never read
    skipped_outside_root: int = 0  # a path leaving the collection root (confine=True): never opened
    truncated_caption: int = 0
    caption_converted_encoding: int = 0

    @property
    def skipped(self) -> int:
        return (self.skipped_corrupt + self.skipped_truncated + self.skipped_missing
                + self.skipped_empty_caption + self.skipped_bad_record + self.skipped_not_a_file
                + self.skipped_too_large + self.skipped_outside_root)

    def as_dict(self) -> dict[str, int]:
        d = dataclasses.asdict(self)
        d["skipped"] = self.skipped
        return d

    def merge(self, other: Counts) -> Counts:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v)


# ------------------------------------------------------------------------------ images
def decode_image(data: bytes | None, counts: Counts) -> np.ndarray | None:
    """Encoded image bytes -> uint8 (H, W, 3), or None (counted) when it must be skipped.

    Does not count `decoded` (the caller does, once the whole example is usable)."""
    if data is None:
        counts.skipped_missing += 1
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 2 or h < 2 or w * h > MAX_PIXELS:
                counts.skipped_corrupt += 1
                return None
            img.load()
            img = ImageOps.exif_transpose(img)
            arr, converted = pil_to_rgb_array(img)
    except UnidentifiedImageError:
        counts.skipped_corrupt += 1
        return None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if "truncated" in str(e).lower():
            counts.skipped_truncated += 1
        else:
            counts.skipped_corrupt += 1
        return None
    except Exception:  # noqa: BLE001 - a decoder bug on hostile bytes must not stop training
        counts.skipped_corrupt += 1
        return None
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        counts.skipped_corrupt += 1
        return None
    if converted:
        counts.converted += 1
    return np.ascontiguousarray(arr)


def read_file(path: str, counts: Counts, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
    """Bytes of `path`, or None (counted) when it is missing or unreadable (skipped_missing),
    not a regular file (skipped_not_a_file: a FIFO would block, /dev/zero never ends) or larger
    than `max_bytes` (skipped_too_large). At most max_bytes + 1 bytes are ever read."""
    if storage.is_remote(path):
        return _read_remote(path, counts, max_bytes)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        counts.skipped_missing += 1
        return None
    if not stat.S_ISREG(st.st_mode):
        counts.skipped_not_a_file += 1
        return None
    if st.st_size > max_bytes:
        counts.skipped_too_large += 1
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        counts.skipped_missing += 1
        return None
    if len(data) > max_bytes:  # grew since the stat
        counts.skipped_too_large += 1
        return None
    return data


def _read_remote(path: str, counts: Counts, max_bytes: int) -> bytes | None:
    """read_file for an object (gs://, s3://): missing or unreadable -> skipped_missing,
    larger than max_bytes -> skipped_too_large, never downloaded."""
    try:
        if storage.size(path) > max_bytes:
            counts.skipped_too_large += 1
            return None
        data = storage.read_bytes(path, max_bytes + 1)
    except (OSError, ValueError):  # StorageError is a ValueError
        counts.skipped_missing += 1
        return None
    if len(data) > max_bytes:
        counts.skipped_too_large += 1
        return None
    return data


# ------------------------------------------------------------------------------ captions
_WS = re.compile(r"\s+")


def decode_text(raw: bytes | str, counts: Counts) -> str:
    """Bytes -> str: UTF-8 (BOM stripped) when valid, else cp1252 / latin-1 (counted)."""
    if isinstance(raw, str):
        try:  # strings read with errors="surrogateescape" carry the undecodable bytes
            raw.encode("utf-8")
            return raw
        except UnicodeEncodeError:
            raw = raw.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        counts.caption_converted_encoding += 1
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def clean_caption(raw: bytes | str | None, counts: Counts,
                  max_chars: int = DEFAULT_MAX_CAPTION_CHARS) -> str | None:
    """Decoded, whitespace-normalised, length-capped caption; None (counted) when empty."""
    if raw is None:
        counts.skipped_empty_caption += 1
        return None
    text = decode_text(raw, counts)
    text = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text)
    text = _WS.sub(" ", text).strip()
    if not text:
        counts.skipped_empty_caption += 1
        return None
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars // 2 else cut).rstrip()
        counts.truncated_caption += 1
    return text


def parse_tags(raw, counts: Counts | None = None) -> list[str]:
    """Tags from a list, or a string separated by '|', ',' or ';' -> stripped, non-empty."""
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)):
        items = [str(t) for t in raw]
    else:
        text = decode_text(raw, counts or Counts())
        sep = "|" if "|" in text else ("," if "," in text else ";")
        items = text.split(sep)
    return [t for t in (_WS.sub(" ", x).strip() for x in items) if t]
