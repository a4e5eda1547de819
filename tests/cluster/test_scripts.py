"""The remote sh scripts (probe, start, one-command bring-up) run by a local POSIX sh."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from quorum_tui.cluster import launch
from quorum_tui.cluster.hostprobe import (
    PROTOCOL_TEXT,
    RUNTIME_NAME,
    parse_facts,
    probe_command,
)
from quorum_tui.cluster.inventory import HostConfig
from quorum_tui.cluster.shipped import glibc_version
from quorum_tui.engine.localcluster import free_port

from .helpers import pid_alive

APP = "a" * 64
LLAMA = "c" * 16


def sh(script: str, cache: Path) -> list[str]:
    env = {**os.environ, "QUORUM_CACHE_DIR": str(cache)}
    done = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.splitlines()


def install_fake_runtime(cache: Path, app: str = APP) -> Path:
    """runtime.json exactly as the install script's json.dump writes it, and a fake worker
    command that prints the start mark and serves nothing."""
    rt = cache / RUNTIME_NAME
    rt.mkdir(parents=True)
    meta = {"protocol": PROTOCOL_TEXT, "llama_cpp": "0.3.36", "rpc": True, "cuda": False,
            "kind": "shipped", "llama": LLAMA}  # fmt: skip
    (rt / "runtime.json").write_text(json.dumps({**meta, "app": app}))
    worker = rt / "worker"
    worker.write_text(
        "#!/bin/sh\necho \"quorum worker on fake: $*\"\ntrap 'kill $!; exit 0' TERM\n"
        "sleep 60 & wait\n"
    )
    worker.chmod(0o755)
    return worker


def host(port: int, threads: int | None = None, rpc_server: str | None = None) -> HostConfig:
    return HostConfig("h", "127.0.0.1", rpc_port=port, threads=threads, rpc_server=rpc_server)


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)


def test_probe_reports_this_machine(tmp_path: Path) -> None:
    facts = parse_facts(sh(probe_command(free_port()), tmp_path))
    assert facts.os == platform.system() and facts.arch == platform.machine()
    assert facts.release == platform.release()
    assert facts.cores == os.cpu_count()
    assert 0 < facts.mem_available <= facts.mem_total
    assert len(facts.load) == 3 and all(x >= 0 for x in facts.load)
    assert facts.python is not None and facts.python[0].isdigit()
    assert facts.cache_dir == str(tmp_path) and facts.runtime is None and not facts.runtime_ok
    assert facts.worker_pid is None


def test_probe_reads_the_runtime_python_and_glibc(tmp_path: Path) -> None:
    worker = install_fake_runtime(tmp_path)
    facts = parse_facts(sh(probe_command(), tmp_path))
    assert facts.runtime_ok and facts.runtime is not None and facts.runtime["app"] == APP
    assert facts.python_path == shutil.which("python3")
    version = subprocess.run(["python3", "-V"], capture_output=True, text=True).stdout
    assert facts.python == version.split()[1]
    assert facts.launcher == str(worker)
    assert facts.glibc == glibc_version() != ""


def test_one_command_starts_then_reuses_the_worker(tmp_path: Path) -> None:
    install_fake_runtime(tmp_path)
    config = host(free_port(), threads=2)
    script = launch.bring_up_script(config, "127.0.0.1", APP, LLAMA, wait=5)
    first = sh(script, tmp_path)
    started = launch.parse_start(first)
    assert started is not None and started.outcome == "listening", first
    try:
        assert parse_facts(first).worker_pid is None
        pidfile = tmp_path / "workers" / f"worker-{config.rpc_port}.pid"
        assert int(pidfile.read_text()) == started.pid and pid_alive(started.pid)
        args = Path(f"/proc/{started.pid}/cmdline").read_bytes().split(b"\0")
        assert [b"--port", str(config.rpc_port).encode()] == args[args.index(b"--port") :][:2]
        assert b"--threads" in args and str(tmp_path / RUNTIME_NAME / "worker").encode() in args
        assert started.log == str(tmp_path / "workers" / f"worker-{config.rpc_port}.log")
        again = sh(script, tmp_path)
        assert parse_facts(again).worker_pid == started.pid
        reused = launch.parse_start(again)
        assert reused == launch.Started(started.pid, "running", "", [])
    finally:
        stop(started.pid)


@pytest.mark.parametrize(
    "meta",
    [
        {"app": "b" * 64},
        {"protocol": "6.0.0"},
        {"rpc": False},
        {"llama": "d" * 16},
    ],
    ids=["other-code", "other-protocol", "no-rpc", "other-build"],
)
def test_a_stale_runtime_starts_nothing(tmp_path: Path, meta: dict[str, object]) -> None:
    install_fake_runtime(tmp_path)
    path = tmp_path / RUNTIME_NAME / "runtime.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **meta}))
    port = free_port()
    out = sh(launch.bring_up_script(host(port), "127.0.0.1", APP, LLAMA, wait=2), tmp_path)
    assert "start=none" in out and launch.parse_start(out) is None
    assert not (tmp_path / "workers" / f"worker-{port}.pid").exists()


def test_no_runtime_starts_nothing(tmp_path: Path) -> None:
    out = sh(launch.bring_up_script(host(free_port()), "127.0.0.1", APP, LLAMA, wait=2), tmp_path)
    assert "start=none" in out and not parse_facts(out).runtime_ok


def test_rpc_server_that_exits_shows_its_log(tmp_path: Path) -> None:
    config = host(free_port(), rpc_server="/bin/false")
    out = sh(launch.bring_up_script(config, "127.0.0.1", APP, LLAMA, wait=5), tmp_path)
    started = launch.parse_start(out)
    assert started is not None and started.outcome == "exited", out
    assert any("quorum starts the worker" in line for line in started.tail)


def test_rpc_server_that_is_not_executable_starts_nothing(tmp_path: Path) -> None:
    config = host(free_port(), rpc_server=str(tmp_path / "missing"))
    out = sh(launch.bring_up_script(config, "127.0.0.1", APP, LLAMA, wait=2), tmp_path)
    assert launch.parse_start(out) is None


def test_parse_facts_takes_pty_output_and_noise() -> None:
    lines = [
        "bash: warning: setlocale: LC_ALL: cannot change locale\r",
        "os=Linux\r",
        "arch=aarch64\r",
        "cores=64\r",
        "mem_total=1024\r",
        "mem_available=512\r",
        "load=0.50 1.25 2.00\r",
        "gpu=NVIDIA A100-SXM4-80GB, 81920, 80000\r",
        "gpu=Weird, Name, 1024, 512\r",
        "gpu=broken\r",
        "python_path=/usr/bin/python3\r",
        "python=Python 3.12.3\r",
        "glibc=glibc 2.39\r",
        "cache_dir=/home/a/.cache/quorum\r",
        'runtime={"protocol": "7.0.0", "rpc": true}\r',
        "worker=4242\r",
        "probe=end\r",
        "os=NotThis\r",
    ]
    facts = parse_facts(lines)
    assert (facts.os, facts.arch, facts.cores) == ("Linux", "aarch64", 64)
    assert (facts.mem_total, facts.mem_available) == (1024 * 1024, 512 * 1024)
    assert facts.load == (0.5, 1.25, 2.0)
    assert [(g.name, g.total, g.free) for g in facts.gpus] == [
        ("NVIDIA A100-SXM4-80GB", 81920 << 20, 80000 << 20),
        ("Weird, Name", 1024 << 20, 512 << 20),
    ]
    assert facts.python == "3.12.3" and facts.python_path == "/usr/bin/python3"
    assert facts.glibc == "2.39"
    assert facts.runtime == {"protocol": "7.0.0", "rpc": True} and facts.worker_pid == 4242


def test_parse_facts_tolerates_missing_and_bad_values() -> None:
    facts = parse_facts(
        [
            "os=Darwin",
            "cache_dir=/c",
            "cores=",
            "load=a b",
            "python=sh: python3: not found",
            "python_path=/nowhere",
            "runtime={not json",
            "worker=12x",
        ]
    )
    assert facts.cores == 1 and facts.mem_total == 0 and facts.load == (0.0, 0.0, 0.0)
    assert facts.python is None and facts.python_path is None
    assert facts.runtime is None and facts.worker_pid is None
    assert parse_facts(["os=Linux", "cache_dir=/c", "runtime=[1, 2]"]).runtime is None


@pytest.mark.parametrize(
    "lines",
    [[], ["garbage"], ["os=Linux"], ["cache_dir=/c"], ["probe=end", "os=Linux", "cache_dir=/c"]],
)
def test_parse_facts_rejects_output_without_facts(lines: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_facts(lines)


def test_parse_start() -> None:
    assert launch.parse_start([]) is None
    assert launch.parse_start(["start=none"]) is None
    assert launch.parse_start(["start=started x"]) is None
    assert launch.parse_start(["start=running 7\r"]) == launch.Started(7, "running", "", [])
    started = launch.parse_start(
        ["start=started 9", "log=/l", "outcome=exited", "tail=a=b", "tail=", "other=1"]
    )
    assert started == launch.Started(9, "exited", "/l", ["a=b", ""])
    waiting = launch.parse_start(["start=started 9", "log=/l"])
    assert waiting is not None and waiting.outcome == "waiting"
