"""Free disk space, checked before a download starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes

MARGIN = 64 << 20
"""Room kept free beyond the download itself."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_room(path: Path, need: int, what: str) -> None:
    """Raise a QuorumError when `need` bytes (plus a margin) do not fit under `path`."""
    if need <= 0:
        return
    free = free_bytes(path)
    if need + MARGIN > free:
        raise QuorumError(
            f"{what} needs {human_bytes(need)} but only {human_bytes(free)} is free on the disk "
            f"holding {path}: free some space, or set QUORUM_CACHE_DIR to a larger disk"
        )
