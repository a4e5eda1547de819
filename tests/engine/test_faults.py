"""Faults and bad input: each gets a clear error naming what is wrong, and nothing hangs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from quorum_tui.engine.completion import CompletionRequest, Piece, stream_completion
from quorum_tui.engine.llama_server import ServerOptions
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.supervisor import CoordinatorProcess, Loaded, Ready
from quorum_tui.errors import QuorumError
from tests.fakerpc import BlackholeProxy, fake_rpc_server

from .conftest import QuorumRunner


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("failover", [False, True], ids=["no-failover", "failover"])
def test_worker_killed_during_generation(
    local_cluster: LocalCluster,
    make_model: Callable[..., Path],
    quorum_dirs: dict[str, Path],
    failover: bool,
) -> None:
    model = make_model(n_layers=8, n_embd=256, n_head=8, n_vocab=800)
    local_cluster.start(2)
    victim = local_cluster.workers[1]
    args = ["run", str(model), "-p", "Once", "--split", "0,4,4"]
    args += ["-n", "300"] if failover else ["-n", "1800", "--no-failover"]
    for worker in local_cluster.workers:
        args += ["--worker", worker.endpoint]
    run = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        streamed = run.stdout.read(40)
        assert len(streamed) == 40
        tree = psutil.Process(run.pid).children(recursive=True)
        assert tree, "the coordinator child process should be running"
        victim.kill(signal.SIGKILL)
        stopped_at = time.monotonic()
        returncode = run.wait(timeout=60)
        waited = time.monotonic() - stopped_at
        err = run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            run.kill()
    assert "Traceback" not in err
    assert waited < 60
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if failover:
        assert returncode == 0, err
        assert f"failing over: the coordinator stopped because worker w2 ({victim.endpoint})" in err
        assert "failed over at " in err and "-> coordinator -, w1 0-7+out" in err
        assert "realized split: coordinator -, w1 0-7+out | 300 tokens" in err
    else:
        assert returncode == 1, err
        assert f"worker w2 ({victim.endpoint}) is unreachable" in err.splitlines()[-1]


def test_incompatible_worker_is_refused_by_name_before_loading(
    quorum: QuorumRunner, tiny_model: Path, quorum_dirs: dict[str, Path]
) -> None:
    with fake_rpc_server((6, 2, 1)) as old:
        for command in (
            ["probe", old],
            ["plan", str(tiny_model), "--worker", old],
            ["run", str(tiny_model), "--worker", old, "-p", "hi"],
            ["serve", str(tiny_model), "--worker", old, "--port", str(free_port())],
        ):
            result = quorum(*command, timeout=60)
            assert result.returncode == 1, command
            text = result.stdout + result.stderr
            assert "incompatible" in text and "6.2.1" in text, command
            if command[0] != "probe":
                assert f"worker w1 ({old})" in one_line(result)
    loaded = list((quorum_dirs["data"] / "logs").glob("coordinator-*"))
    assert not loaded, "nothing may load for a bad worker"


def test_unreachable_worker_is_named(quorum: QuorumRunner, tiny_model: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    err = one_line(quorum("run", str(tiny_model), "--worker", dead, "-p", "hi"))
    assert f"worker w1 ({dead}) is unreachable" in err


@pytest.mark.parametrize(
    ("split", "n_workers", "message"),
    [
        ("1,2,1", 2, "adds up to 4 layers but the model has 5"),
        ("1,-2,6", 2, "gives -2 layers to w1"),
        ("1,2", 2, "has 2 counts but there are 2 workers"),
        ("1,two,2", 2, "'two' is not a whole number"),
    ],
)
def test_bad_splits(
    quorum: QuorumRunner, tiny_model: Path, split: str, n_workers: int, message: str
) -> None:
    args = ["plan", str(tiny_model), "--split", split]
    for i in range(n_workers):
        args += ["--worker", f"127.0.0.1:{50200 + i}"]
    assert message in one_line(quorum(*args))


def test_more_than_16_workers(quorum: QuorumRunner, tiny_model: Path) -> None:
    args = ["run", str(tiny_model), "-p", "hi"]
    for i in range(17):
        args += ["--worker", f"127.0.0.1:{50300 + i}"]
    assert "17 workers given but llama.cpp accepts at most 16" in one_line(quorum(*args))


def test_missing_model(quorum: QuorumRunner, tmp_path: Path) -> None:
    err = one_line(quorum("run", str(tmp_path / "missing.gguf"), "-p", "hi"))
    assert "missing.gguf" in err and "does not exist" in err


def test_corrupt_model_in_run(quorum: QuorumRunner, tiny_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:10000])
    assert "truncated" in one_line(quorum("run", str(cut), "-p", "hi"))


async def test_coordinator_refuses_to_serve_when_llama_loads_something_else(
    shared_workers: LocalCluster, tiny_model: Path
) -> None:
    workers = shared_workers.refs[:2]
    plan = LayerPlan.from_counts(5, [1, 2, 2], workers)
    other = LayerPlan.from_counts(5, [1, 3, 1], workers).to_llama_params()
    options = ServerOptions(port=free_port(), slots=1)
    proc = CoordinatorProcess(tiny_model, plan, options, params=other)
    await proc.start()
    events = [event async for event in proc.events()]
    assert not any(isinstance(e, (Loaded, Ready)) for e in events)
    assert proc.returncode is not None and not proc.running
    reason = await proc.failure_reason()
    assert reason.startswith("llama.cpp did not load the plan")
    assert "layer 3: planned on w2, loaded on w1" in reason
    assert proc.realized == (0, 1, 1, 1, 2, 2)
    assert proc.mismatch


def test_report_is_json(quorum: QuorumRunner, tiny_model: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    done = quorum("run", str(tiny_model), "-p", "hi", "-n", "5", "--report", str(report))
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert set(data) >= {"stages", "output_stage", "prompt_tokens", "completion_tokens",
                         "tokens_per_s", "load_s"}  # fmt: skip


async def test_worker_cut_off_the_network_is_named_not_waited_for(
    local_cluster: LocalCluster, make_model: Callable[..., Path]
) -> None:
    model = make_model(n_layers=8, n_embd=256, n_head=8, n_vocab=800)
    local_cluster.start(1)
    proxy = BlackholeProxy(local_cluster.workers[0].endpoint)
    try:
        plan = LayerPlan.from_counts(8, [4, 4], [WorkerRef("far", proxy.endpoint)])
        proc = CoordinatorProcess(model, plan, ServerOptions(port=free_port(), slots=1))
        await proc.start()
        ready = asyncio.Event()

        async def follow() -> None:
            async for event in proc.events(stall_check=2.0):
                if isinstance(event, Ready):
                    ready.set()

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(ready.wait(), 60)
        request = CompletionRequest("Once", 1800, extra={"ignore_eos": True})
        tokens = 0
        with pytest.raises(QuorumError):
            async for item in stream_completion(proc.url, request, timeout=120):
                if isinstance(item, Piece):
                    tokens += 1
                    if tokens == 5:
                        proxy.blackhole()
        await asyncio.wait_for(watcher, 60)
        assert tokens >= 5
        assert proc.returncode is not None
        reason = await proc.failure_reason()
        assert f"worker far ({proxy.endpoint}) is unreachable" in reason
    finally:
        proxy.close()
