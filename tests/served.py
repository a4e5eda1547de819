"""A real deployment serving a model for the tests that talk to it, and a small wait helper."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum_tui.deploy.deployment import Access, Deployment, Prepared
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings

NO_EOS = {"logit_bias": {"2": -100.0}}
"""Request fields that keep the synthetic model (eos id 2) from ending a reply early."""


@dataclass
class Served:
    url: str
    """Quorum's endpoint, with /v1."""
    plan: LayerPlan
    deployment: Deployment


@asynccontextmanager
async def served(
    model: Path,
    workers: Sequence[WorkerRef] = (),
    ctx: int = 2048,
    slots: int = 4,
    counts: Sequence[int] | None = None,
    api_key: str | None = None,
    failover: bool = True,
    host: str = "127.0.0.1",
    server_args: Sequence[str] = (),
) -> AsyncIterator[Served]:
    """The model served through a deployment: split `counts`, or evenly over the workers."""
    info = inspect_model(model)
    plan = (
        LayerPlan.from_counts(info.n_layers, counts, list(workers))
        if counts is not None
        else LayerPlan.even(info.n_layers, list(workers))
    )
    settings = EngineSettings(ctx=ctx, slots=slots, threads=1, server_args=tuple(server_args))
    access = Access(host=host, api_key=api_key)
    deployment = Deployment(settings=settings, access=access, failover=failover)
    try:
        base = await asyncio.wait_for(deployment.start(Prepared(model, info, plan)), 120)
        yield Served(f"{base}/v1", plan, deployment)
    finally:
        await deployment.close()


@contextmanager
def served_in_thread(model: Path, **options: Any) -> Iterator[Served]:
    """`served` on its own event loop in a thread, for fixtures shared by a module's tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = served(model, **options)
    try:
        yield asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(180)
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def eventually(
    predicate: Callable[[], bool], timeout: float = 60, step: float = 0.05
) -> None:
    """Wait until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(step)
