"""One small path layer for every path a user gives: local paths, `gs://...` and `s3://...`.

Everything goes through fsspec (gcsfs for gs://, s3fs for s3:// when installed) and, for Orbax,
etils.epath; there is no storage client of our own. Local paths stay plain strings handled by
the standard library, so a local run behaves exactly as before.

Environment defaults set on import (only when the user has not set them):
  EPATH_USE_TF=false       etils.epath goes through fsspec, not TensorFlow's gfile (which would
                           import TensorFlow into every process and ignore the emulator)
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
                           gcsfs 2026.10 otherwise asks for the bucket type over gRPC first,
                           which a GCS emulator never answers (60 s per call)
  TENSORSTORE_GCS_HTTP_URL from STORAGE_EMULATOR_HOST, so Orbax's tensorstore and gcsfs talk to
                           the same server (an emulator, or a private endpoint)

Object stores cannot rename or append: callers that need either (metrics.jsonl, moving a
checkpoint aside) ask `is_remote` and use part objects or copies instead.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as globlib
import logging
import os
import shutil

from clipjax.errors import ConfigError

REMOTE_SCHEMES = ("gs", "gcs", "s3", "memory")


def _set_env_defaults() -> None:
    os.environ.setdefault("EPATH_USE_TF", "false")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        url = emulator if "://" in emulator else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)


_set_env_defaults()
# gcsfs logs every exhausted retry with a traceback; the errors reach the caller anyway, and
# clipjax says them in one line naming the path.
logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


class StorageError(ConfigError):
    """A path that cannot be reached, listed, read or written, said in one line naming it."""


def scheme(path) -> str:
    path = os.fspath(path)
    return path.split("://", 1)[0].lower() if "://" in path else ""


def is_remote(path) -> bool:
    return scheme(path) not in ("", "file")


def _strip_file(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def fs_and_path(path):
    """(fsspec filesystem, path inside it) for a remote URL."""
    import fsspec

    # No listings cache: a run polls for steps other processes (or Orbax's threads) just wrote.
    kwargs = {"use_listings_cache": False}
    if scheme(path) in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        kwargs["token"] = "anon"  # an emulator takes no credentials
    try:
        return fsspec.core.url_to_fs(path, **kwargs)
    except ImportError as e:
        raise StorageError(f"{path}: no filesystem for {scheme(path)}:// is installed ({e})") from None


def normalize(path) -> str:
    """An absolute local path, or the URL unchanged (with no trailing slash)."""
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(_strip_file(path))


def join(base, *parts) -> str:
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [str(p).strip("/") for p in parts])
    return os.path.join(base, *parts)


def dirname(path) -> str:
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)


def basename(path) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def epath(path):
    """An etils.epath.Path (what Orbax takes) for a local path or URL."""
    from etils import epath as ep

    return ep.Path(normalize(path))


# ------------------------------------------------------------------------------ queries
def _call(path, what: str, fn):
    """fn() with storage errors said in one line naming `path`."""
    try:
        return fn()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise
    except StorageError:
        raise
    except PermissionError as e:
        raise StorageError(f"{path}: permission denied while {what} ({_short(e)})") from None
    except OSError as e:
        if "forbidden" in str(e).lower():  # gcsfs' HttpError for a 403
            raise StorageError(f"{path}: permission denied while {what} ({_short(e)})") from None
        raise StorageError(f"{path}: {what} failed ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - aiohttp / google-auth errors are not OSErrors
        raise StorageError(f"{path}: {what} failed ({type(e).__name__}: {_short(e)})") from None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def exists(path) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.exists(_strip_file(path))
    fs, p = fs_and_path(path)
    return bool(_call(path, "checking it exists", lambda: fs.exists(p)))


def isdir(path) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isdir(_strip_file(path))
    fs, p = fs_and_path(path)
    return bool(_call(path, "listing it", lambda: fs.isdir(p)))


def isfile(path) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isfile(_strip_file(path))
    fs, p = fs_and_path(path)
    return bool(_call(path, "reading its metadata", lambda: fs.isfile(p)))


def size(path) -> int:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getsize(_strip_file(path))
    fs, p = fs_and_path(path)
    return int(_call(path, "reading its size", lambda: fs.size(p)))


def listdir(path) -> list[str]:
    """Names (not paths) directly under `path`."""
    path = os.fspath(path)
    if not is_remote(path):
        return sorted(os.listdir(_strip_file(path)))
    fs, p = fs_and_path(path)
    entries = _call(path, "listing it", lambda: fs.ls(p, detail=False))
    return sorted(basename(e) for e in entries if e.rstrip("/") != p.rstrip("/"))


def makedirs(path) -> None:
    """Create a local directory (and parents); object stores have no directories: no-op."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(_strip_file(path), exist_ok=True)


def open(path, mode: str = "rb", **kwargs):  # noqa: A001 - the storage layer's open
    path = os.fspath(path)
    if not is_remote(path):
        return builtins.open(_strip_file(path), mode, **kwargs)
    fs, p = fs_and_path(path)
    return _call(path, "opening it", lambda: fs.open(p, mode, **kwargs))


def read_bytes(path, max_bytes: int | None = None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if max_bytes is None else f.read(max_bytes)


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Write a whole file / object (an object appears complete or not at all)."""
    path = os.fspath(path)
    if not is_remote(path):
        makedirs(os.path.dirname(os.path.abspath(_strip_file(path))))
        tmp = _strip_file(path) + ".tmp"
        with builtins.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, _strip_file(path))
        return
    fs, p = fs_and_path(path)
    _call(path, "writing it", lambda: fs.pipe_file(p, data))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def move(src, dst) -> None:
    """Rename a file or directory; on an object store a copy then a removal of the source
    (nothing is removed before the copy is complete)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src) and not is_remote(dst):
        os.rename(_strip_file(src), _strip_file(dst))
        return
    fs, s = fs_and_path(src)
    _, d = fs_and_path(dst)
    _call(src, f"moving it to {dst}", lambda: fs.mv(s, d, recursive=True))


def copy_tree(src, dst) -> None:
    """Copy a file or directory between any two of local / remote."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src) and not is_remote(dst):
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
        return
    if is_remote(src) and not is_remote(dst):
        fs, s = fs_and_path(src)
        _call(src, f"downloading it to {dst}", lambda: fs.get(s, dst, recursive=True))
    elif not is_remote(src):
        fs, d = fs_and_path(dst)
        _call(dst, f"uploading {src} to it", lambda: fs.put(src, d, recursive=True))
    else:
        fs, s = fs_and_path(src)
        _, d = fs_and_path(dst)
        _call(src, f"copying it to {dst}", lambda: fs.copy(s, d, recursive=True))


# ------------------------------------------------------------------------------ patterns
def expand_braces(pattern: str) -> list[str]:
    """webdataset / open_clip brace expansion: "a/{00000..00003}.tar" -> 4 names (zero padding
    kept), "{a,b}" alternatives, several groups multiply."""
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def expand(pattern, must_exist: bool = True) -> list[str]:
    """Files a pattern names: brace groups expanded, then glob characters matched (locally or
    on the object store), in order. With must_exist, a pattern that matches nothing or a
    named file that is missing raises FileNotFoundError naming it."""
    out: list[str] = []
    for item in expand_braces(os.fspath(pattern)):
        if globlib.has_magic(item):
            matches = _glob(item)
            if not matches and must_exist:
                raise FileNotFoundError(f"no file matches {item!r}")
            out.extend(matches)
        else:
            out.append(item)
    if must_exist:
        # One listing per directory, not a request per shard (41,456 shards of LAION).
        by_dir: dict[str, list[str]] = {}
        for item in out:
            by_dir.setdefault(dirname(item), []).append(item)
        for d, items in by_dir.items():
            if is_remote(d):
                check_reachable(d)
            if is_remote(d) or len(items) > 1:
                try:
                    present = set(listdir(d))
                except FileNotFoundError:
                    raise FileNotFoundError(f"{items[0]}: not found (no such directory or bucket: {d})") from None
                missing = [i for i in items if basename(i) not in present]
            else:
                missing = [i for i in items if not os.path.isfile(_strip_file(i))]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise FileNotFoundError(f"{missing[0]}: not found{more}")
    return out


def _glob(pattern: str) -> list[str]:
    if not is_remote(pattern):
        return sorted(globlib.glob(_strip_file(pattern)))
    check_reachable(pattern)
    fs, p = fs_and_path(pattern)
    prefix = scheme(pattern) + "://"
    return sorted(prefix + m for m in _call(pattern, "listing it", lambda: fs.glob(p)))


# ------------------------------------------------------------------------------ checks
def endpoint(path) -> tuple[str, int] | None:
    """(host, port) of the object store serving `path`: the emulator / private endpoint the
    environment names, else the public one; None for local paths."""
    from urllib.parse import urlparse

    kind = scheme(path)
    if kind in ("gs", "gcs"):
        url = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    elif kind == "s3":
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
    else:
        return None
    u = urlparse(url if "://" in url else f"http://{url}")
    return u.hostname or "localhost", u.port or (443 if u.scheme == "https" else 80)


def check_reachable(path, timeout_s: float = 10.0) -> None:
    """A TCP connection to the store serving `path` opens within `timeout_s`; otherwise one line
    now, instead of the filesystem's minute of retries and their tracebacks."""
    import socket

    where = endpoint(path)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout_s).close()
    except OSError as e:
        raise StorageError(f"{path}: cannot reach the object store at {where[0]}:{where[1]} "
                           f"({e.strerror or type(e).__name__})") from None


# Where Orbax (0.12, through tensorstore) can write checkpoints: local paths and GCS. It turns
# "s3://b/x" into "s3:/b/x" and refuses it; s3:// is for data and for reading other formats.
CHECKPOINT_SCHEMES = ("", "file", "gs", "gcs")


def check_checkpoint_location(path) -> None:
    if scheme(path) not in CHECKPOINT_SCHEMES:
        raise StorageError(f"{path}: Orbax checkpoints can be written locally or to gs:// only "
                           f"(not {scheme(path)}://); put the workdir / checkpoint there (data may stay on "
                           f"{scheme(path)}://)")


def check_writable_location(path) -> None:
    """Before the first step: the bucket of a remote workdir exists and answers (one line
    naming the path otherwise: unreachable endpoint, missing bucket, no permission)."""
    path = os.fspath(path)
    check_checkpoint_location(path)
    if not is_remote(path):
        return
    check_reachable(path)
    fs, p = fs_and_path(path)
    bucket = p.split("/", 1)[0]
    try:
        ok = fs.exists(bucket)
    except PermissionError as e:
        raise StorageError(f"{path}: permission denied on bucket {bucket!r} ({_short(e)})") from None
    except OSError as e:
        if "forbidden" in str(e).lower() or "403" in str(e):
            raise StorageError(f"{path}: permission denied on bucket {bucket!r} ({_short(e)})") from None
        raise StorageError(f"{path}: cannot reach the object store ({type(e).__name__}: {_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, auth: one line
        raise StorageError(f"{path}: cannot reach the object store ({type(e).__name__}: {_short(e)})") from None
    if not ok:
        raise StorageError(f"{path}: bucket {bucket!r} does not exist (create it first)")


_DOWNLOADS: dict[str, str] = {}


def local_copy(path) -> str:
    """A local path holding what `path` holds: `path` itself when local; for a URL, a download
    (file or directory) into a temporary directory, made once per process and removed at exit
    (for readers that need a real file: transformers, torch.load)."""
    path = os.fspath(path)
    if not is_remote(path):
        return _strip_file(path)
    path = normalize(path)
    if path not in _DOWNLOADS:
        import atexit
        import tempfile

        tmp = tempfile.mkdtemp(prefix="clipjax-download-")
        atexit.register(shutil.rmtree, tmp, True)
        dest = os.path.join(tmp, basename(path))
        if isdir(path):
            fs, p = fs_and_path(path)
            os.makedirs(dest)
            for remote in _call(path, "listing it", lambda: fs.find(p)):
                rel = remote[len(p.rstrip("/")) + 1:]
                os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                _call(path, "downloading it", lambda r=remote, l=os.path.join(dest, rel): fs.get_file(r, l))
        else:
            if not exists(path):
                raise FileNotFoundError(f"{path}: not found")
            fs, p = fs_and_path(path)
            _call(path, "downloading it", lambda: fs.get_file(p, dest))
        _DOWNLOADS[path] = dest
    return _DOWNLOADS[path]


def upload_dir(local_dir: str, dest) -> None:
    """Copy the files of a local directory to `dest` (local or remote), keeping the layout."""
    dest = os.fspath(dest)
    if not is_remote(dest):
        shutil.copytree(local_dir, _strip_file(dest), dirs_exist_ok=True)
        return
    for root, _, files in os.walk(local_dir):
        for name in files:
            local = os.path.join(root, name)
            rel = os.path.relpath(local, local_dir).replace(os.sep, "/")
            with builtins.open(local, "rb") as f:
                write_bytes(join(dest, rel), f.read())


@contextlib.contextmanager
def local_output(dest):
    """A local path standing for `dest`: `dest` itself when local; for a URL, a path in a
    temporary directory whose files (the one at that path and any written beside it, e.g.
    <out>_confusion.png) are uploaded next to `dest` when the block ends without error."""
    dest = os.fspath(dest)
    if not is_remote(dest):
        yield dest
        return
    import tempfile

    tmp = tempfile.mkdtemp(prefix="clipjax-upload-")
    try:
        yield os.path.join(tmp, basename(dest))
        upload_dir(tmp, dirname(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
