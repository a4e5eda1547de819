"""A llama.cpp process that dies by a signal is named in words, with its cause and remedy.

Every process here really dies of the signal: it is sent to the live worker or llama-server.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quorum_tui.deploy.deployment import Deployment, Target
from quorum_tui.deploy.events import DeployEvent, Phase, PhaseChanged
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.completion import CompletionRequest
from quorum_tui.engine.cpucheck import cpu_verdict
from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.llama_server import ServerOptions
from quorum_tui.engine.llamabuild import BUILD_ENV, LlamaBuild
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.supervisor import CoordinatorProcess, Ready
from quorum_tui.errors import QuorumError
from tests.buildcopy import build_copy

WORDS = {
    signal.SIGILL: "died of SIGILL: this CPU (or the virtual machine it runs in) refused",
    signal.SIGKILL: "was killed by SIGKILL: most often the kernel's out-of-memory killer",
    signal.SIGSEGV: "llama.cpp crashed:",
}
SIGNALS = [pytest.param(s, id=s.name) for s in WORDS]


@pytest.fixture
def own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaBuild]:
    monkeypatch.setenv(BUILD_ENV, str(build_copy(tmp_path / "build")))
    yield LlamaBuild.installed()


@pytest.mark.parametrize("sig", SIGNALS)
async def test_a_coordinator_killed_by_a_signal_is_named(
    own_build: LlamaBuild, tiny_model: Path, sig: signal.Signals
) -> None:
    variant = cpu_verdict(own_build).variant
    plan = LayerPlan.from_counts(5, [5], [])
    process = CoordinatorProcess(tiny_model, plan, ServerOptions(port=free_port(), slots=1))
    await process.start()
    events = process.events()
    async for event in events:
        if isinstance(event, Ready):
            break
    assert process.proc is not None
    os.kill(process.proc.pid, sig)
    async for _ in events:
        pass
    assert process.returncode == -sig
    reason = await process.failure_reason()
    assert reason.startswith("the coordinator (llama-server)") or reason.startswith("llama.cpp")
    assert WORDS[sig] in reason and str(process.log_path) in reason
    if sig == signal.SIGILL:
        fallback = cpu_verdict(own_build)
        assert fallback.variant != variant
        assert f"no longer uses the {variant} kernels on this machine" in reason
        assert f"the next start uses {fallback.variant}" in reason
        assert any(r.variant == variant and r.status == "refused" for r in fallback.results)
    if sig == signal.SIGSEGV:
        assert f"the last lines of {process.log_path}:" in reason


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_worker_killed_by_a_signal_is_named(
    local_cluster: LocalCluster, sig: signal.Signals
) -> None:
    worker = local_cluster.add("w1")
    worker.process.send_signal(sig)
    assert worker.process.wait(10) == -sig
    death = worker.death()
    assert death.startswith("worker w1 ") or death.startswith("llama.cpp crashed: worker w1 ")
    assert WORDS[sig] in death and str(worker.log) in death


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_a_dead_worker_is_named_with_how_it_died(
    make_model: Callable[..., Path], sig: signal.Signals
) -> None:
    """The deployment that started a worker says how it died when the coordinator stops."""
    model = make_model(n_layers=4, n_embd=128)
    events: list[DeployEvent] = []
    deployment = Deployment(Target(local_workers=2), on_event=events.append, failover=False)
    async with deployment:
        prepared = await deployment.prepare(str(model), PlanRequest(split=(0, 2, 2)))
        await deployment.start(prepared)
        assert deployment.pool.local is not None
        victim = deployment.pool.local.workers[1]
        victim.process.send_signal(sig)
        victim.process.wait(10)
        with pytest.raises(QuorumError):
            await deployment.run(CompletionRequest("Once upon a time", 8))
        reason = await asyncio.wait_for(deployment.wait(), 60)
    assert reason is not None
    assert f"worker {victim.name} ({victim.endpoint}) is unreachable" in reason
    assert WORDS[sig].removesuffix(":") in reason
    assert deployment.phase == Phase.STOPPED
    assert any(
        isinstance(e, PhaseChanged) and e.phase == Phase.STOPPED and e.reason == reason
        for e in events
    )


def test_exit_codes_and_other_signals_read_plainly() -> None:
    assert describe_exit("x", 3, "/l", ["a", "last words"]) == (
        "x exited with status 3: last words (log: /l)"
    )
    assert describe_exit("x", -signal.SIGTERM) == "x was stopped by SIGTERM"
    assert describe_exit("x", -signal.SIGUSR1, "/l") == "x died of SIGUSR1 (log: /l)"
    assert "the last lines" not in describe_exit("x", -signal.SIGABRT)
