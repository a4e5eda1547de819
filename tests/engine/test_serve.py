"""`quorum serve`: an OpenAI-compatible API over the sharded model, plus the realized plan."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from quorum_tui.engine.localcluster import LocalCluster, free_port


@pytest.fixture
def server(shared_workers: LocalCluster, tiny_model: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    args = ["serve", str(tiny_model), "--split", "1,2,2", "--port", str(port)]
    for worker in shared_workers.workers[:2]:
        args += ["--worker", worker.endpoint]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    second = proc.stdout.readline()
    assert first.startswith("serving OpenAI-compatible API at"), proc.stderr and proc.stderr.read()
    base = f"http://127.0.0.1:{port}"
    assert second.strip() == f"realized assignment: {base}/quorum/plan"
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        yield base, first
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        psutil.wait_procs(children, timeout=10)
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]


def serving(args: list[str]) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """`quorum ARGS` (a serve) once it says it serves, and the processes it started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    if not first.startswith("serving"):
        proc.kill()
        pytest.fail(f"quorum serve did not start: {first}{proc.stderr.read()}")
    return proc, psutil.Process(proc.pid).children(recursive=True)


def test_quorum_route_returns_the_realized_assignment(
    server: tuple[str, str], shared_workers: LocalCluster
) -> None:
    base, _ = server
    body = httpx.get(f"{base}/quorum/plan", timeout=10).json()
    assert body["realized"] == [0, 1, 1, 2, 2, 2]
    assert body["realized_by_name"] == ["coordinator", "w1", "w1", "w2", "w2", "w2"]
    assert [s["layers"] for s in body["stages"]] == [[0, 0], [1, 2], [3, 4]]
    assert body["stages"][1]["endpoint"] == shared_workers.workers[0].endpoint
    assert body["output_stage"] == 2


def test_streaming_chat_completion(server: tuple[str, str]) -> None:
    base, _ = server
    request = {
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
    }
    chunks = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=request, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line.removeprefix("data: "))
    assert chunks[-1] == "[DONE]"
    deltas = [json.loads(c)["choices"][0]["delta"] for c in chunks[:-1]]
    assert any(d.get("content") for d in deltas)


def test_completion_and_models(server: tuple[str, str], tiny_model: Path) -> None:
    base, _ = server
    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == tiny_model.name
    done = httpx.post(
        f"{base}/v1/completions",
        json={"prompt": "Once upon", "max_tokens": 8, "temperature": 0},
        timeout=60,
    ).json()
    assert done["usage"]["completion_tokens"] > 0
    assert isinstance(done["choices"][0]["text"], str)


def test_a_worker_killed_mid_stream_ends_serve_with_its_name(
    local_cluster: LocalCluster, slow_model: Path
) -> None:
    local_cluster.start(2)
    port = free_port()
    args = ["serve", str(slow_model), "--split", "0,4,4", "--port", str(port), "--no-failover"]
    for worker in local_cluster.workers:
        args += ["--worker", worker.endpoint]
    proc, children = serving(args)
    try:
        assert proc.stderr is not None
        victim = local_cluster.workers[1]
        body = {"prompt": "Once", "max_tokens": 1500, "stream": True, "ignore_eos": True}
        url = f"http://127.0.0.1:{port}/v1/completions"
        lines = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", url, json=body, timeout=60) as response,
        ):
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) == 10:
                    victim.kill(signal.SIGKILL)
        assert "[DONE]" not in "".join(lines)
        events = [line for line in lines if line.startswith("data: ")]
        assert "stopped mid-reply" in events[-1]
        assert proc.wait(timeout=60) == 1
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"worker w2 ({victim.endpoint}) is unreachable" in err.splitlines()[-1]
    assert "Traceback" not in err
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]


def test_serve_binds_several_addresses_passes_options_and_ends_on_sigterm(
    shared_workers: LocalCluster, tiny_model: Path
) -> None:
    port = free_port()
    args = ["serve", str(tiny_model), "--port", str(port), "--host", "127.0.0.1,127.0.0.2"]
    args += ["--worker", shared_workers.workers[0].endpoint, "--", "--alias", "tiny"]
    proc, children = serving(args)
    try:
        assert proc.stderr is not None
        for host in ("127.0.0.1", "127.0.0.2"):
            models = httpx.get(f"http://{host}:{port}/v1/models", timeout=10).json()
            assert models["data"][0]["id"] == "tiny", host
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]
