"""Helpers for the app's tests: a fixed, deterministic app description and a wait helper."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from quorum_tui.engine.plan import WorkerRef
from quorum_tui.tui.session import Setup

FIXED_WORKERS = [WorkerRef("gpu-a", "10.0.0.11:50052"), WorkerRef("gpu-b", "10.0.0.12:50052")]


def fixed_setup(model: Path, workers: list[WorkerRef] | None = None) -> Setup:
    """An app description with no live probing: what it shows depends only on this."""
    workers = FIXED_WORKERS if workers is None else workers
    hosts: list[dict[str, object]] = [
        dict(name="coordinator", address="this machine", state="idle", cpu=[4, 8, 15, 30, 22, 12],
             memory=[38, 39, 41, 40], mem_used=3 << 30, mem_total=8 << 30),
    ]  # fmt: skip
    for index, ref in enumerate(workers):
        hosts.append(
            dict(name=ref.name, address=ref.endpoint.rsplit(":", 1)[0], endpoint=ref.endpoint,
                 state="ok" if index == 0 else "unreachable", cpu=[1, 3, 9, 27, 60, 35][index:],
                 memory=[20, 22, 25], mem_used=(1 + index) << 30, mem_total=16 << 30,
                 free=12 << 30 if index == 0 else None, rtt_ms=0.8 if index == 0 else None)
        )  # fmt: skip
    return Setup(
        model=str(model), workers=workers, live=False, fixed_hosts=hosts, local_free=4 << 30
    )


async def wait_until(
    pilot: Pilot[None], predicate: Callable[[], bool], timeout: float = 60
) -> None:
    """Let the app run until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await pilot.pause(0.1)


async def settle(pilot: Pilot[None], timeout: float = 60) -> None:
    """Wait until no worker of the app is pending or running, then for a refresh."""
    await wait_until(pilot, lambda: all(w.is_finished for w in pilot.app.workers), timeout)
    await pilot.pause()
