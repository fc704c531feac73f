"""Where TFDS datasets live when the user names no directory."""

from __future__ import annotations

import os


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir`, or when empty TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    (read at call time, so a test or a user can point everything elsewhere with the variable)."""
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
