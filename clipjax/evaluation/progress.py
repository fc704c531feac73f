"""Progress bars of evaluate.py's runs, on stderr so stdout stays the metrics table."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img"):
    """A tqdm bar (a context manager with `update(n)`); `total` 0 when unknown."""
    return tqdm(total=total or None, desc=desc, unit=unit, disable=not enabled, file=sys.stderr)
