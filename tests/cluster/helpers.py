"""Shared helpers for the cluster tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from quorum_tui.cluster.bringup import BringUpOptions, Cluster, bring_up
from quorum_tui.cluster.events import HostEvent
from quorum_tui.cluster.inventory import load_inventory


def quorum(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (env carries the test's Quorum dirs)."""
    return subprocess.run(
        [sys.executable, "-m", "quorum_tui", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def up(path: Path, **options: object) -> tuple[Cluster, list[HostEvent]]:
    events: list[HostEvent] = []
    opts = BringUpOptions(on_event=events.append, **options)  # type: ignore[arg-type]
    cluster = await bring_up(load_inventory(path), opts)
    return cluster, events


def states(cluster: Cluster) -> dict[str, str]:
    return {r.host.name: r.state for r in cluster.results}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return "Z"
