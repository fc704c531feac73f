"""Streaming webdataset tar shards at pod scale, with an exact, compact resume position.

`ShardStream` is one process's stream of raw samples ({ext: bytes, "__key__", "__url__",
"__epoch__", "__shard__"}) read from tar shards at any path `clipjax.storage` opens (local,
gs://, s3://), as open_clip / webdataset users lay them out. No dependency on `webdataset`.

Sources (open_clip's `--train-data`): "gs://b/laion/{00000..41455}.tar::/data/cc12m/{000..999}.tar",
several lists separated by "::" (or a Python list), each brace-expanded and globbed by
`storage.expand` (a missing shard raises FileNotFoundError naming it, at construction).
`weights` (open_clip's `--train-data-upsampling-factors`, "1::2" or a list) give each shard of
list i the weight w_i:
  resampled=True   every shard of the stream is drawn with replacement, shard probability
                   proportional to its list's weight (open_clip's --dataset-resampled), an
                   infinite stream, one independent draw sequence per process;
  resampled=False  (open_clip refuses weights here; we give them a meaning) an epoch holds each
                   shard of list i floor(w_i) times plus, for the fractional part, a
                   (seed, epoch)-drawn round(frac(w_i) * len(list i)) of its shards; weight 1
                   everywhere is the plain "every shard once per epoch".

Shard order: the shard sequence of a process is infinite (or `epochs` long): epoch e is the
epoch's shard list permuted with (seed, e) (the same permutation on every process), of which
process p takes entries p, p + P, p + 2P, ... (disjoint shards per process; fewer shards than
processes is a ConfigError). Sequence index s = e * L + i (L = this process's shards per epoch).
With resampled=True, sequence entry s is a weighted draw from (seed, p, s).

Interleaving: `in_flight` shards are open at once ("slots"); samples are taken round-robin, one
per slot in slot order; a finished shard's slot is refilled in place with the next shard of the
sequence, which gives that turn's sample. The order is a function of the data and the
settings only: background threads (`threads=True`) read each open shard ahead into a bounded
buffer (`read_ahead_samples`, `read_ahead_bytes` per shard) but never decide the order.
Consecutive epochs overlap at their boundary (a slot that finishes the last shard of epoch e
opens the first of e + 1), so the pipeline never drains; every sample is tagged with its
shard's epoch (`__epoch__`; the draw index for resampled streams).

Shuffling: a buffer of `shuffle_buffer` raw samples (undecoded bytes); once full, each output
is a uniformly drawn buffer entry (numpy PCG64 seeded with (seed, process)), replaced by the
next interleaved sample (webdataset's `shuffle`, without its smaller initial fill).

Position (`state()`), JSON-able, O(shuffle_buffer) small ints, valid after the last sample
handed out whatever the readers have read ahead:
  {"version": 1, "seed", "process": [p, P], "n_urls", "resampled", "in_flight",
   "shuffle_buffer", "epochs", "epoch": epoch of the next shard to open,
   "next_shard": s of the next shard to open, "rr": the slot whose turn it is,
   "slots": [[s, url index, byte offset of the next sample's first tar header], ...],
   "buffer": [[s, byte offset of the sample's first header], ...] (buffer order),
   "rng": the shuffle generator's PCG64 state (hex strings), "samples": handed out so far}
`ShardStream(same settings, state=s)` continues with exactly the samples an uninterrupted
stream yields after that point: each slot reopens its shard at its offset (tar headers are
512-byte aligned), and each buffered sample is read again from its shard and offset.

Failures: transient read errors (any exception from opening, seeking or reading: OSError,
gcsfs / aiohttp errors) are retried `retries` times with exponential backoff, reopening at the
start of the sample being read (so nothing is yielded twice); then the shard is skipped. A
truncated or corrupt tar ends its shard after the last sample known complete (the sample
being read, whose end is only known at the next sample's header, is dropped). Both count once in
`counts["shards_skipped"]`. Members over `max_member_bytes` (images.MAX_FILE_BYTES) are
skipped unread (seeked over) and listed in the sample's "__too_large__".
"""

from __future__ import annotations

import collections
import logging
import math
import os
import tarfile
import threading
import time
from collections.abc import Sequence

import numpy as np

from clipjax import storage
from clipjax.data.images import MAX_FILE_BYTES, NoUsableExamplesError
from clipjax.errors import ConfigError

log = logging.getLogger(__name__)

STATE_VERSION = 1
_BLOCK = 512


class CorruptShard(Exception):
    """A tar that cannot be parsed further (truncated, bad header checksum): not retried."""


# ------------------------------------------------------------------------------ sources
def parse_sources(source, weights=None) -> tuple[list[list[str]], list[float]]:
    """(expanded url lists, one weight per list) from open_clip's "a::b" form or a list."""
    if isinstance(source, (str, os.PathLike)):
        patterns = [p for p in os.fspath(source).split("::") if p.strip()]
    else:
        patterns = [os.fspath(p) for p in source]
    if not patterns:
        raise ConfigError("no shard source given (config.data.source)")
    if weights is None or weights == "":
        ws = [1.0] * len(patterns)
    else:
        items = weights.split("::") if isinstance(weights, str) else list(weights)
        try:
            ws = [float(w) for w in items]
        except (TypeError, ValueError):
            raise ConfigError(f"source weights {weights!r}: not numbers") from None
        if len(ws) != len(patterns):
            raise ConfigError(f"{len(ws)} source weights ({weights!r}) for {len(patterns)} shard lists "
                              f"({' :: '.join(patterns)})")
        if any(w < 0 or not math.isfinite(w) for w in ws) or sum(ws) <= 0:
            raise ConfigError(f"source weights {weights!r}: need finite weights >= 0, not all 0")
    lists = [storage.expand(p.strip()) for p in patterns]
    for p, urls in zip(patterns, lists):
        if not urls:
            raise FileNotFoundError(f"no shard matches {p!r}")
    return lists, ws


# ------------------------------------------------------------------------------ tar reading
def _parse_pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise CorruptShard("bad pax header") from None
        if length <= 0:
            raise CorruptShard("bad pax header")
        rec = data[sp + 1:pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise CorruptShard(f"truncated: wanted {n} bytes, got {len(data)}")
    return data


def _padded(size: int) -> int:
    return (size + _BLOCK - 1) // _BLOCK * _BLOCK


def iter_samples(f, start: int, max_member_bytes: int = MAX_FILE_BYTES, counts=None):
    """(byte offset of the sample's first header, sample, offset of the next sample) for the
    samples of the tar `f` (a binary file positioned at `start`, a header boundary), grouped
    webdataset-style: consecutive members sharing the name up to the first "." of the base
    name. Raises CorruptShard at a truncated or unparsable part (after yielding what came
    before it; the partial sample is dropped)."""
    pos = start
    cur_key, cur, cur_start, too_large = None, None, None, []
    while True:
        # ---- one member (with its GNU long-name / pax extension headers)
        mstart, longname, pax = pos, None, {}
        while True:
            buf = f.read(_BLOCK)
            if not buf:
                member = None
                break
            if len(buf) < _BLOCK:
                raise CorruptShard(f"truncated header at byte {pos}")
            if buf.count(0) == _BLOCK:  # end-of-archive block
                member = None
                break
            try:
                info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise CorruptShard(f"bad tar header at byte {pos} ({e})") from None
            pos += _BLOCK
            size = info.size
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                if size > 2**20:
                    raise CorruptShard(f"extension header of {size} bytes at byte {pos - _BLOCK}")
                data = _read_exact(f, _padded(size))[:size]
                pos += _padded(size)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    longname = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    pax.update(_parse_pax(data))
                continue
            name = pax.get("path") or longname or info.name
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise CorruptShard(f"bad pax size at byte {mstart}") from None
            member = (name, size, info.type in tarfile.REGULAR_TYPES)
            break
        if member is None:
            break
        name, size, is_file = member
        base = name.rsplit("/", 1)[-1]
        dot = base.find(".")
        wanted = is_file and dot > 0
        if wanted:
            key = name[:len(name) - len(base) + dot]
            ext = base[dot + 1:].lower()
            if key != cur_key:
                if cur is not None:
                    if too_large:
                        cur["__too_large__"] = too_large
                    yield cur_start, cur, mstart
                cur_key, cur, cur_start, too_large = key, {"__key__": key}, mstart, []
        if wanted and size <= max_member_bytes:
            data = _read_exact(f, size)
            if _padded(size) > size:
                _read_exact(f, _padded(size) - size)
            cur[ext] = data
        else:
            if wanted:
                too_large.append(ext)
                if counts is not None:
                    counts.add("members_too_large")
            if size:
                f.seek(pos + _padded(size))
        pos += _padded(size)
    if cur is not None:
        if too_large:
            cur["__too_large__"] = too_large
        yield cur_start, cur, pos


# ------------------------------------------------------------------------------ counters
class _Counts:
    """Thread-safe int counters (reader threads count retries)."""

    NAMES = ("samples", "shards_opened", "shards_done", "shards_skipped", "read_retries",
             "members_too_large", "resume_rereads", "resume_lost")

    def __init__(self):
        self._lock = threading.Lock()
        self._d = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1):
        with self._lock:
            self._d[name] = self._d.get(name, 0) + n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._d)


class _Slot:
    """One open shard: a reader (a background thread filling a bounded deque, or inline) and
    the consumer's position in it (offset of the next sample's first header)."""

    def __init__(self, stream: ShardStream, seq: int, url_index: int, offset: int, threaded: bool):
        self.seq, self.url_index, self.offset = int(seq), int(url_index), int(offset)
        self.url = stream.urls[url_index]
        self._stream = stream
        self._gen = stream._read_shard(self.url, self.offset)
        self._threaded = threaded
        self._stop = False
        if threaded:
            self._items: collections.deque = collections.deque()
            self._bytes = 0
            self._cv = threading.Condition()
            self._thread = threading.Thread(target=self._run, name=f"shard-{seq}", daemon=True)
            self._thread.start()

    def _run(self):
        s = self._stream
        try:
            for item in self._gen:
                n = sum(len(v) for v in item[1].values() if isinstance(v, bytes)) if not isinstance(item, _End) else 0
                with self._cv:
                    while (not self._stop and self._items
                           and (len(self._items) >= s.read_ahead_samples or self._bytes + n > s.read_ahead_bytes)):
                        self._cv.wait(0.5)
                    if self._stop:
                        return
                    self._items.append((item, n))
                    self._bytes += n
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - a bug in the reader: hand it to the consumer
            with self._cv:
                self._items.append((e, 0))
                self._cv.notify_all()
        finally:
            self._gen.close()

    def get(self):
        """(start, sample, next) or _END(status) when the shard is finished."""
        if not self._threaded:
            return next(self._gen)
        with self._cv:
            while not self._items:
                self._cv.wait(1.0)
                if not self._thread.is_alive() and not self._items:
                    raise RuntimeError(f"{self.url}: reader thread ended without a result")
            item, n = self._items.popleft()
            self._bytes -= n
            self._cv.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop = True
        if self._threaded:
            with self._cv:
                self._cv.notify_all()
        else:
            self._gen.close()


class _End:
    def __init__(self, ok: bool, why: str = ""):
        self.ok, self.why = ok, why


# ------------------------------------------------------------------------------ the stream
class ShardStream:
    """Iterator of raw samples from webdataset tar shards; see the module doc."""

    def __init__(self, source, *, weights=None, process_index: int = 0, process_count: int = 1,
                 seed: int = 0, in_flight: int = 4, shuffle_buffer: int = 0, resampled: bool = False,
                 epochs: int | None = None, state: dict | None = None, threads: bool = True,
                 max_member_bytes: int = MAX_FILE_BYTES, read_ahead_samples: int = 64,
                 read_ahead_bytes: int = 64 * 2**20, retries: int = 3, retry_backoff: float = 0.5,
                 remote_block_size: int = 8 * 2**20):
        self.lists, self.weights = parse_sources(source, weights)
        self.urls: list[str] = [u for lst in self.lists for u in lst]
        self._list_of = np.repeat(np.arange(len(self.lists)), [len(x) for x in self.lists])
        self.process_index, self.process_count = int(process_index), int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ConfigError(f"process_index {process_index} not in [0, {process_count})")
        self.seed, self.in_flight = int(seed), max(1, int(in_flight))
        self.shuffle_buffer = max(0, int(shuffle_buffer or 0))
        self.resampled, self.epochs = bool(resampled), (None if epochs is None else int(epochs))
        self.threads, self.max_member_bytes = bool(threads), int(max_member_bytes)
        self.read_ahead_samples, self.read_ahead_bytes = max(1, int(read_ahead_samples)), int(read_ahead_bytes)
        self.retries, self.retry_backoff = int(retries), float(retry_backoff)
        self.remote_block_size = int(remote_block_size)
        self.counts = _Counts()
        self._epoch_cache: collections.OrderedDict = collections.OrderedDict()
        self._draw_cache: tuple[int, np.ndarray] | None = None

        if self.resampled:
            w = np.asarray([self.weights[i] for i in self._list_of], np.float64)
            self._probs = w / w.sum()
            self.shards_per_epoch = max(1, len(self.urls) // self.process_count)
        else:
            total = len(self._epoch_all(0))
            if total < self.process_count:
                raise ConfigError(f"{total} shards per epoch for {self.process_count} processes: every process "
                                  "needs at least one shard of its own (write more, smaller shards, or use "
                                  "resampled=True)")
            if total == 0:
                raise ConfigError("source weights select no shard")
            self.shards_per_epoch = len(range(self.process_index, total, self.process_count))
        self._length = None if (self.resampled or self.epochs is None) else self.epochs * self.shards_per_epoch

        self._slots: list[_Slot] = []
        self._next_seq, self._rr = 0, 0
        self._buffer: list[tuple[int, int, dict]] = []  # (seq, offset, sample)
        self._rng = np.random.default_rng([self.seed, self.process_index, 0x5EED])
        self._empty_run = 0
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ shard sequence
    def _epoch_all(self, epoch: int) -> list[int]:
        """Every process's shards of `epoch` (url indices), permuted with (seed, epoch)."""
        rng = np.random.default_rng([self.seed, int(epoch), 0xE90C])
        out: list[int] = []
        start = 0
        for lst, w in zip(self.lists, self.weights):
            idx = list(range(start, start + len(lst)))
            start += len(lst)
            out += idx * int(math.floor(w))
            extra = int(round((w - math.floor(w)) * len(idx)))
            if extra:
                out += sorted(rng.choice(idx, extra, replace=False).tolist())
        return [out[i] for i in rng.permutation(len(out))]

    def _epoch_mine(self, epoch: int) -> list[int]:
        got = self._epoch_cache.get(epoch)
        if got is None:
            got = self._epoch_all(epoch)[self.process_index::self.process_count]
            self._epoch_cache[epoch] = got
            while len(self._epoch_cache) > 3:
                self._epoch_cache.popitem(last=False)
        return got

    def epoch_of(self, seq: int) -> int:
        return int(seq) // self.shards_per_epoch if not self.resampled else int(seq)

    def shard_at(self, seq: int) -> int | None:
        """The url index of sequence entry `seq`, None past the end of a finite stream."""
        seq = int(seq)
        if self._length is not None and seq >= self._length:
            return None
        if self.resampled:
            block = seq // 1024
            if self._draw_cache is None or self._draw_cache[0] != block:
                rng = np.random.default_rng([self.seed, self.process_index, block, 0xD4A7])
                self._draw_cache = (block, rng.choice(len(self.urls), 1024, p=self._probs))
            return int(self._draw_cache[1][seq % 1024])
        return self._epoch_mine(seq // self.shards_per_epoch)[seq % self.shards_per_epoch]

    def shard_sequence(self, n: int) -> list[str]:
        """The first n shard urls this process opens (for inspection / tests)."""
        out = []
        for s in range(n):
            i = self.shard_at(s)
            if i is None:
                break
            out.append(self.urls[i])
        return out

    # ------------------------------------------------------------------ reading
    def _read_shard(self, url: str, start: int):
        """Generator: (start, sample, next) items of one shard from byte `start`, then _End."""
        self.counts.add("shards_opened")
        pos, attempt = int(start), 0
        while True:
            try:
                with self._open_file(url) as f:
                    if pos:
                        f.seek(pos)
                    for s_start, sample, s_next in iter_samples(f, pos, self.max_member_bytes, self.counts):
                        yield s_start, sample, s_next
                        pos, attempt = s_next, 0
                yield _End(True)
                return
            except CorruptShard as e:
                yield _End(False, f"{url}: {e}")
                return
            except Exception as e:  # noqa: BLE001 - OSError, gcsfs / aiohttp errors: transient
                if attempt >= self.retries:
                    yield _End(False, f"{url}: {type(e).__name__}: {e} (after {attempt} retries)")
                    return
                attempt += 1
                self.counts.add("read_retries")
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))

    def _open_file(self, url: str):
        """A binary file of the shard; an object store's with a plain read-ahead cache of
        `remote_block_size` (gcsfs's default "adaptive" cache made a request per small read:
        8 s for a 2 MB shard of 512-byte tar headers from the emulator, 0.04 s this way)."""
        if storage.is_remote(url):
            return storage.open(url, "rb", cache_type="readahead", block_size=self.remote_block_size)
        return storage.open(url, "rb")

    def _read_one(self, url: str, offset: int) -> dict | None:
        """The sample at `offset` of `url` (re-reading a buffered sample on resume)."""
        for attempt in range(self.retries + 1):
            try:
                with self._open_file(url) as f:
                    f.seek(offset)
                    for _, sample, _ in iter_samples(f, offset, self.max_member_bytes):
                        return sample
                    return None
            except CorruptShard:
                return None
            except Exception:  # noqa: BLE001 - transient, as in _read_shard
                if attempt >= self.retries:
                    return None
                self.counts.add("read_retries")
                time.sleep(self.retry_backoff * 2 ** attempt)
        return None

    def _open(self, seq: int, offset: int = 0) -> _Slot | None:
        i = self.shard_at(seq)
        if i is None:
            return None
        return _Slot(self, seq, i, offset, self.threads)

    def _tag(self, sample: dict, seq: int, url: str) -> dict:
        sample["__url__"] = url
        sample["__shard__"] = seq
        sample["__epoch__"] = self.epoch_of(seq)
        return sample

    def _next_interleaved(self) -> tuple[int, int, dict]:
        """(seq, offset, sample): the next sample in round-robin slot order."""
        while True:
            if not self._slots:
                while len(self._slots) < self.in_flight:
                    slot = self._open(self._next_seq)
                    if slot is None:
                        break
                    self._next_seq += 1
                    self._slots.append(slot)
                if not self._slots:
                    raise StopIteration
                self._rr = 0
            j = self._rr % len(self._slots)
            slot = self._slots[j]
            item = slot.get()
            if isinstance(item, _End):
                self.counts.add("shards_done")
                if not item.ok:
                    self.counts.add("shards_skipped")
                    log.warning("skipping the rest of shard %s", item.why)
                slot.close()
                self._empty_run += 1
                limit = max(2 * self.shards_per_epoch, 2 * self.in_flight, 8)
                if self._empty_run > limit:
                    raise NoUsableExamplesError(f"{self._empty_run} shards in a row gave no sample "
                                                f"(last: {slot.url}); counts: {self.counts.as_dict()}")
                new = self._open(self._next_seq)
                if new is None:
                    del self._slots[j]
                    self._rr = j
                else:
                    self._next_seq += 1
                    self._slots[j] = new
                continue
            start, sample, nxt = item
            slot.offset = nxt
            self._rr = (j + 1) % len(self._slots)
            self._empty_run = 0
            return slot.seq, start, self._tag(sample, slot.seq, slot.url)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.shuffle_buffer <= 1:
            _, _, sample = self._next_interleaved()
        else:
            while len(self._buffer) < self.shuffle_buffer:
                try:
                    self._buffer.append(self._next_interleaved())
                except StopIteration:
                    break
            if not self._buffer:
                raise StopIteration
            j = int(self._rng.integers(len(self._buffer)))
            _, _, sample = self._buffer[j]
            self._buffer[j] = self._buffer[-1]
            self._buffer.pop()
        self.counts.add("samples")
        return sample

    # ------------------------------------------------------------------ position
    def state(self) -> dict:
        """The exact position after the last sample handed out (see the module doc)."""
        st = self._rng.bit_generator.state
        return {
            "version": STATE_VERSION, "seed": self.seed, "process": [self.process_index, self.process_count],
            "n_urls": len(self.urls), "resampled": self.resampled, "in_flight": self.in_flight,
            "shuffle_buffer": self.shuffle_buffer, "epochs": self.epochs,
            "epoch": self.epoch_of(self._next_seq), "next_shard": self._next_seq, "rr": self._rr,
            "slots": [[s.seq, s.url_index, s.offset] for s in self._slots],
            "buffer": [[seq, off] for seq, off, _ in self._buffer],
            "rng": {"state": format(st["state"]["state"], "x"), "inc": format(st["state"]["inc"], "x"),
                    "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])},
            "samples": self.counts.as_dict()["samples"],
        }

    def _restore(self, st: dict) -> None:
        if st.get("version") != STATE_VERSION:
            raise ConfigError(f"shard stream state version {st.get('version')!r}, expected {STATE_VERSION}")
        want = {"seed": self.seed, "process": [self.process_index, self.process_count], "n_urls": len(self.urls),
                "resampled": self.resampled, "in_flight": self.in_flight, "shuffle_buffer": self.shuffle_buffer,
                "epochs": self.epochs}
        diff = [f"{k}: saved {st.get(k)!r}, now {v!r}" for k, v in want.items() if st.get(k) != v]
        if diff:
            raise ConfigError("cannot resume the shard stream exactly with other settings (" + "; ".join(diff) + ")")
        self._next_seq, self._rr = int(st["next_shard"]), int(st["rr"])
        for seq, url_index, offset in st["slots"]:
            if self.shard_at(seq) != int(url_index):
                raise ConfigError(f"shard stream state: sequence entry {seq} is shard {self.shard_at(seq)}, "
                                  f"saved as {url_index} (a different shard list?)")
        self._slots = [_Slot(self, seq, url_index, offset, self.threads) for seq, url_index, offset in st["slots"]]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(st["rng"]["state"], 16), "inc": int(st["rng"]["inc"], 16)},
            "has_uint32": int(st["rng"]["has_uint32"]), "uinteger": int(st["rng"]["uinteger"])}
        self.counts.add("samples", int(st.get("samples", 0)))
        refs = [(int(a), int(b)) for a, b in st["buffer"]]
        by_shard: dict[int, list[int]] = collections.defaultdict(list)
        for seq, off in refs:
            by_shard[seq].append(off)
        got: dict[tuple[int, int], dict] = {}
        jobs = [(seq, self.urls[self.shard_at(seq)], sorted(set(offs))) for seq, offs in by_shard.items()]

        def reread(job):  # one shard's buffered samples, in offset order (one read-ahead block serves many)
            seq, url, offs = job
            out = []
            for off in offs:
                sample = self._read_one(url, off)
                self.counts.add("resume_rereads")
                if sample is None:
                    self.counts.add("resume_lost")
                else:
                    out.append(((seq, off), self._tag(sample, seq, url)))
            return out

        if len(jobs) > 1 and self.threads:
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(min(16, len(jobs))) as pool:
                results = list(pool.map(reread, jobs))
        else:
            results = [reread(j) for j in jobs]
        for part in results:
            got.update(part)
        self._buffer = [(seq, off, dict(got[(seq, off)])) for seq, off in refs if (seq, off) in got]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        for s in self._slots:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream_from_config(data_config, process_index: int = 0, process_count: int = 1, state=None,
                       **kwargs) -> ShardStream:
    """The ShardStream config.data describes (source, source_weights, resampled,
    shuffle_buffer, seed, in_flight)."""
    d = data_config
    source = d.get("source", None)
    if not source:
        raise ConfigError("config.data.source is required for tar shards (e.g. 'gs://b/{00000..00099}.tar')")
    if not isinstance(source, (str, os.PathLike)) and not isinstance(source, Sequence):
        raise ConfigError(f"config.data.source {source!r}: a string or a list of strings")
    return ShardStream(source, weights=d.get("source_weights", None), process_index=process_index,
                       process_count=process_count, seed=int(d.get("seed", 0)),
                       in_flight=int(d.get("in_flight", 4) or 4),
                       shuffle_buffer=int(d.get("shuffle_buffer", 1000) or 0),
                       resampled=bool(d.get("resampled", False)), state=state, **kwargs)
