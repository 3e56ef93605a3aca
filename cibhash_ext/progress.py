"""Progress bars with rate and ETA on stderr (tqdm), or the bare iterable when they are off."""

from __future__ import annotations

import sys

__all__ = ["progress"]


def progress(iterable, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"):
    """``iterable`` wrapped in a tqdm bar on stderr, or ``iterable`` itself when not ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
