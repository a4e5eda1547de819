"""`quorum worker`: clear one-line errors, and signals stop it at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from quorum_tui.engine.localcluster import (
    LocalCluster,
    LocalWorker,
    free_port,
    wait_ready,
    worker_command,
)
from quorum_tui.engine.probe import probe

from .conftest import QuorumRunner


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_non_numeric_host_is_refused(quorum: QuorumRunner) -> None:
    err = one_line_error(quorum("worker", "--host", "localhost", "--port", str(free_port())))
    assert "'localhost' is not a numeric IPv4 address" in err


def test_port_in_use_is_refused(quorum: QuorumRunner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = one_line_error(quorum("worker", "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_worker_at_once(tmp_path: Path, sig: signal.Signals) -> None:
    cluster = LocalCluster(tmp_path)
    worker = cluster.add("w", wait=True)
    worker.process.send_signal(sig)
    assert worker.process.wait(timeout=10) == -sig
    assert probe(worker.endpoint, timeout=1).status == "unreachable"


def test_worker_announces_itself_and_keeps_llama_output_in_its_log(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "native.log"
    cmd = [*worker_command(port, cache=tmp_path / "cache"), "--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(LocalWorker("w", port, proc, log))  # type: ignore[arg-type]
        assert (tmp_path / "cache").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert f"quorum worker on 127.0.0.1:{port}" in out
    assert "tensor cache: " + str(tmp_path / "cache") in out
    assert "Starting RPC server" not in out + err
    assert "Starting RPC server v7.0.0" in log.read_text()


def test_worker_on_all_interfaces_warns(tmp_path: Path) -> None:
    port = free_port("0.0.0.0")
    cmd = [*worker_command(port, host="0.0.0.0"), "--log", str(tmp_path / "l.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        assert "no authentication" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()


def test_local_workers_end_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from quorum_tui.engine.localcluster import LocalCluster\n"
        "cluster = LocalCluster(Path(sys.argv[1]))\n"
        "cluster.start(1)\n"
        "print(cluster.workers[0].process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    worker = psutil.Process(int(owner.stdout.readline()))
    assert worker.is_running()
    owner.kill()
    owner.wait()
    gone, alive = psutil.wait_procs([worker], timeout=15)
    assert gone and not alive
