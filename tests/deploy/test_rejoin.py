"""Real workers die and come back, again and again, and Quorum keeps serving.

`wait()` is awaited throughout: it must not return while the deployment serves, fails over or
rejoins. The workers are the deployment's own (its pool restarts them), or the user's, started
and killed by the test (`quorum bench chaos` does that, under load, as a user would).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.deploy.events import DeployEvent, FailedOver, Phase, WorkerBack
from quorum_tui.deploy.pool import WorkerEvent
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.settings import EngineSettings

pytestmark = pytest.mark.slow


async def reply(http: httpx.AsyncClient, base: str) -> str:
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    answer = await http.post(f"{base}/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["text"])


async def until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_worker_killed_three_times_is_restarted_and_rejoins_while_serving(
    real_model_file: Path,
) -> None:
    seen: list[DeployEvent] = []
    settings = EngineSettings(threads=2, repack=False)
    deployment = Deployment(
        Target(local_workers=3), settings, on_event=seen.append, rejoin_after=1.0
    )
    async with deployment, httpx.AsyncClient(timeout=120) as http:
        await deployment.connect_workers()
        info = inspect_model(real_model_file)
        plan = LayerPlan.from_counts(info.n_layers, [0, 10, 10, 10], deployment.workers)
        base = await deployment.start(Prepared(real_model_file, info, plan))
        waiting = asyncio.ensure_future(deployment.wait())
        alone = await reply(http, base)
        local = deployment.pool.local
        assert local is not None
        for cycle in range(3):
            victim = next(w for w in local.workers if w.name == "w2")
            victim.kill(signal.SIGKILL)
            assert await reply(http, base) == alone, f"cycle {cycle}: the failover's reply"
            failovers = [e for e in seen if isinstance(e, FailedOver)]
            assert len(failovers) == cycle + 1 and [w.name for w in failovers[-1].dead] == ["w2"]
            await until(
                lambda: deployment.away == [] and deployment.phase == Phase.SERVING,
                90,
                f"cycle {cycle}: w2 was not restarted and used again",
            )
            body = (await http.get(f"{base}/quorum/plan")).json()
            assert body["summary"] == plan.summary() and body["away"] == []
            assert await reply(http, base) == alone
            assert not waiting.done(), f"wait() returned {waiting.result()!r} while serving"
        restarts = [e for e in seen if isinstance(e, WorkerEvent) and e.state == "up"]
        assert len([e for e in restarts if e.reason.startswith("restarted")]) == 3
        assert len([e for e in seen if isinstance(e, WorkerBack)]) == 3
    assert await asyncio.wait_for(waiting, 5) is None
    assert deployment.phase == Phase.STOPPED


def test_the_soak_every_reply_whole_or_visibly_failed_and_serve_still_up(
    real_model_file: Path,
) -> None:
    """`quorum bench chaos`, smaller than its defaults: 3 clients x 6 greedy requests while a
    random worker is killed and restarted every few seconds."""
    done = subprocess.run(
        [sys.executable, "-m", "quorum_tui", "bench", "chaos", "--model", str(real_model_file),
         "--clients", "3", "--requests", "6", "--kills", "3", "--every", "2", "--json"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"requests", "completed", "identical", "failed_visibly", "silent",
                           "kills", "serve_alive", "pauses_s"}  # fmt: skip
    assert result["requests"] == 18 and result["kills"] == 3
    assert result["silent"] == 0, result
    assert result["completed"] + result["failed_visibly"] == 18
    assert result["identical"] == result["completed"]
    assert result["serve_alive"] is True, result
    assert all(pause > 0 for pause in result["pauses_s"])
