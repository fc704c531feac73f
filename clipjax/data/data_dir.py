"""Where TFDS datasets live when the user names no directory."""

from __future__ import annotations

import contextlib
import os


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir`, or when empty TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    (read at call time, so a test or a user can point everything elsewhere with the variable)."""
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


@contextlib.contextmanager
def preparing(data_dir: str, name: str):
    """Held while `name` is prepared under a local `data_dir`: a second process preparing the
    same dataset there (two runs started together, or test workers) waits, then finds it
    prepared, instead of both writing the same files. A no-op for object storage."""
    if "://" in os.fspath(data_dir):
        yield
        return
    import fcntl

    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".clipjax-prepare-{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
