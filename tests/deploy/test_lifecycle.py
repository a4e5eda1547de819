"""The deployment's lifecycle under random sequences of worker deaths, returns, failed loads,
rejoins, client requests and stops (a Hypothesis state machine over fast stand-ins).

Invariants: `wait()` returns only once the deployment is stopped; the phase is always one of
the named ones; every reply either completes with the text of the same request sent alone or
fails visibly (an error status, an error event, or no [DONE]), never complete-looking but
different; and once stopped, no coordinator is left running.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from quorum_tui.deploy.deployment import Deployment, Prepared, Target, Timing
from quorum_tui.deploy.events import Phase
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import free_port
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from tests.standins import FakeLauncher, FakeWorker, reply_text

FAST = Timing(rejoin_poll=0.05, reason_wait=2.0, retry_first=0.05, retry_max=0.4)
WORKERS = 3


async def ask(url: str, prompt: str, tokens: int) -> str:
    """One streamed completion: complete, failed (visibly) or silent (looks complete, is not
    the reply the same request gets alone)."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    text, done, error = "", False, False
    try:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{url}/v1/completions", json=body) as response,
        ):
            if response.status_code != 200:
                return "failed"
            raw = b""
            async for chunk in response.aiter_bytes():
                raw += chunk
            for event in raw.split(b"\n\n"):
                if not event.startswith(b"data: "):
                    continue
                data = event[6:]
                if data == b"[DONE]":
                    done = True
                    continue
                payload = json.loads(data)
                if "error" in payload:
                    error = True
                else:
                    text += payload["choices"][0].get("text") or ""
    except httpx.HTTPError:
        return "failed"
    if error or not done:
        return "failed"
    return "complete" if text == reply_text(prompt, tokens) else "silent"


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.workers = [FakeWorker(free_port()) for _ in range(WORKERS)]
        self.launcher = FakeLauncher()
        refs = tuple(WorkerRef(f"w{i + 1}", w.endpoint) for i, w in enumerate(self.workers))
        self.deployment: Deployment | None = None
        self.refs = refs
        self.requests: list[asyncio.Task[str]] = []
        self.asked = 0
        self.stopped = False
        self.waiting: asyncio.Task[str | None] | None = None

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(work)

    @initialize()
    def serve(self) -> None:
        async def start() -> None:
            for worker in self.workers:
                await worker.revive()
            deployment = Deployment(
                Target(workers=self.refs),
                launcher=self.launcher,
                rejoin_after=0.1,
                timing=FAST,
            )
            self.deployment = deployment
            info = inspect_model(MODEL)
            plan = LayerPlan.from_counts(info.n_layers, [0, 2, 2, 2], list(self.refs))
            await deployment.start(Prepared(MODEL, info, plan))
            self.waiting = asyncio.ensure_future(deployment.wait())

        self.run(start())

    @precondition(lambda self: not self.stopped)
    @rule(index=st.integers(0, WORKERS - 1))
    def kill(self, index: int) -> None:
        self.run(self.workers[index].kill())

    @precondition(lambda self: not self.stopped)
    @rule(index=st.integers(0, WORKERS - 1))
    def revive(self, index: int) -> None:
        self.run(self.workers[index].revive())

    @precondition(lambda self: not self.stopped)
    @rule()
    def next_load_fails(self) -> None:
        self.launcher.fail_next = True

    @precondition(lambda self: not self.stopped)
    @rule(tokens=st.integers(1, 40))
    def request(self, tokens: int) -> None:
        assert self.deployment is not None and self.deployment.gateway is not None
        self.asked += 1
        url = self.deployment.gateway.url
        self.requests.append(self.loop.create_task(ask(url, f"p{self.asked}", tokens)))

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2, 0.5]))
    def time_passes(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @precondition(lambda self: not self.stopped)
    @rule()
    def rejoin(self) -> None:
        assert self.deployment is not None
        self.run(self.deployment.rejoin())

    @precondition(lambda self: not self.stopped)
    @rule()
    def stop(self) -> None:
        assert self.deployment is not None
        self.run(self.deployment.close())
        self.stopped = True

    @invariant()
    def wait_returns_only_after_stop(self) -> None:
        if self.waiting is not None and self.waiting.done():
            assert self.stopped, f"wait() returned {self.waiting.result()!r} before any stop"

    @invariant()
    def the_phase_is_named(self) -> None:
        if self.deployment is not None:
            assert self.deployment.phase in set(Phase)
            if self.deployment.phase == Phase.STOPPED:
                assert self.stopped

    @invariant()
    def no_reply_is_silently_wrong(self) -> None:
        for task in self.requests:
            if task.done():
                assert task.result() in ("complete", "failed")

    def teardown(self) -> None:
        try:
            if self.deployment is not None and not self.stopped:
                self.run(self.deployment.close())
            if self.requests:
                outcomes = self.run(asyncio.wait_for(asyncio.gather(*self.requests), 60))
                assert "silent" not in outcomes
            if self.waiting is not None:
                assert self.run(asyncio.wait_for(self.waiting, 10)) is None
            assert all(not c.running for c in self.launcher.made), "a coordinator was left"
            assert self.deployment is not None and self.deployment.phase == Phase.STOPPED
            for worker in self.workers:
                self.run(worker.kill())
            self.run(asyncio.sleep(0.05))
        finally:
            self.loop.close()


MODEL = Path()


def test_the_lifecycle_holds_under_random_faults(tmp_path_factory: Any) -> None:
    global MODEL
    MODEL = synthetic_model(SyntheticSpec(n_layers=6), tmp_path_factory.mktemp("lifecycle"))
    machine = settings(
        max_examples=15,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )(Lifecycle)
    machine.TestCase().runTest()
