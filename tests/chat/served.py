"""A real coordinator in serve mode for the chat tests, and a small wait helper."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from quorum_tui.engine.coordinator import Job
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import free_port
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.supervisor import CoordinatorProcess, preflight

NO_EOS = {"logit_bias": {"2": -100.0}}
"""Request fields that keep the synthetic model (eos id 2) from ending a reply early."""


@dataclass
class Served:
    url: str
    plan: LayerPlan
    process: CoordinatorProcess


@asynccontextmanager
async def served(
    model: Path, workers: Sequence[WorkerRef] = (), ctx: int = 2048, log: Path | None = None
) -> AsyncIterator[Served]:
    """A coordinator serving `model`, all layers on the workers when there are any."""
    plan = LayerPlan.even(inspect_model(model).n_layers, list(workers))
    results = await preflight(plan.workers)
    job = Job(
        str(model),
        list(plan.workers),
        list(plan.counts),
        mode="serve",
        ctx=ctx,
        threads=1,
        port=free_port(),
        device_counts=[len(r.devices) for r in results] or None,
    )
    process = CoordinatorProcess(job, log)
    await process.start()
    try:
        url = await asyncio.wait_for(_ready(process), 120)
        yield Served(url, plan, process)
    finally:
        await process.stop()


@contextmanager
def served_in_thread(model: Path, log: Path) -> Iterator[Served]:
    """`served` on its own event loop in a thread, for fixtures shared by a module's tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = served(model, log=log)
    try:
        yield asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(180)
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _ready(process: CoordinatorProcess) -> str:
    async for event in process.events():
        if event["event"] == "ready":
            return str(event["url"])
    raise AssertionError(f"the coordinator did not serve: {await process.failure_reason()}")


async def eventually(
    predicate: Callable[[], bool], timeout: float = 60, step: float = 0.05
) -> None:
    """Wait until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(step)
