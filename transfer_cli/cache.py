"""The on-disk cache (paths.cache_dir: token ids, frozen features) as arrays in .npz files. An entry is written
atomically (a temporary file renamed into place), so that concurrent runs that write the same entry each leave a
whole file. A zip member carries a CRC-32 that numpy checks on reading: a truncated or corrupt entry fails to load,
is reported, and is rebuilt. A cache that cannot be written is a warning, not an error: the run goes on without it."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .outputs import write_atomic

log = logging.getLogger("transfer")


def load_entry(path: Path, valid: Callable[[Dict[str, np.ndarray]], bool] = lambda _: True) -> Optional[Dict[str, np.ndarray]]:
    """The arrays of a cache entry; None when it is missing, or corrupt (then it is removed, with a warning)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        if valid(arrays):
            return arrays
        problem = "its arrays do not fit together"
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
    log.warning("cache entry %s is corrupt (%s); rebuilding it", path, problem)
    path.unlink(missing_ok=True)
    return None


def save_entry(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as e:
        log.warning("cannot write the cache at %s (%s); going on without it (set paths.cache_dir or "
                    "TRANSFER_CACHE_DIR to a writable folder)", path.parent, e.strerror or e)
