"""Start, check and stop detached workers on a host (POSIX sh over SSH, pid files).

Each worker Quorum starts has `workers/worker-<port>.pid` and `workers/worker-<port>.log`
under the remote cache dir; `stop` only signals a process whose pid file Quorum wrote and
whose command line still names that port.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from quorum_tui.cluster import hostprobe
from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.inventory import HostConfig
from quorum_tui.cluster.sessions import HostSession

CACHE_SH = f'{hostprobe.CACHE_SH}; d="$c/workers"'
LOG_TAIL = 12

WorkerStatus = Literal["running", "stopped"]


@dataclass(frozen=True)
class RemoteWorker:
    status: WorkerStatus
    pid: int | None
    detail: str


def _files(port: int) -> str:
    return f'{CACHE_SH}; pidf="$d/worker-{port}.pid"; log="$d/worker-{port}.log"'


def _alive(port: int) -> str:
    return (
        '[ -f "$pidf" ] && pid=$(cat "$pidf") && kill -0 "$pid" 2>/dev/null && '
        f"ps -o args= -p \"$pid\" | grep -qE -e '(--port|-p) {port}( |$)'"
    )


def worker_command(host: HostConfig, bind: str, python: str | None) -> str:
    """The remote command line of the worker (sh syntax, uses $c and $log)."""
    port = host.rpc_port
    if host.rpc_server:
        cmd = f"{shlex.quote(host.rpc_server)} -H {bind} -p {port} -c"
        return cmd + (f" -t {host.threads}" if host.threads else "")
    assert python is not None
    cmd = (
        f"{shlex.quote(python)} -m quorum_tui.cluster.agent --host {bind} --port {port} "
        '--cache "$c/rpc-cache" --log "$log"'
    )
    return cmd + (f" --threads {host.threads}" if host.threads else "")


async def worker_status(session: HostSession, port: int) -> RemoteWorker:
    script = f'{_files(port)}; if {_alive(port)}; then echo "running $pid"; else echo stopped; fi'
    out = str((await session.run(script)).stdout or "").split()
    if out and out[0] == "running":
        return RemoteWorker("running", int(out[1]), f"pid {out[1]}")
    return RemoteWorker("stopped", None, "no worker process")


@dataclass(frozen=True)
class Started:
    """What the start command saw: `outcome` is running, listening, exited or waiting."""

    pid: int
    outcome: str
    log: str
    tail: list[str]


START_MARKS = ("quorum worker on", "Starting RPC server")
"""Printed just before the server binds: by `quorum worker`, and by ggml (upstream binaries)."""


async def start_worker(
    session: HostSession, bind: str, python: str | None, wait: float = 10.0
) -> Started:
    """Start the worker detached and wait (up to `wait` s) until it starts serving or dies.

    One remote command: the worker is double-forked (setsid, nohup) so it outlives the SSH
    session and is reaped by init; a running worker is left alone ("running").
    """
    host = session.host
    cmd = worker_command(host, bind, python)
    marks = " ".join(f'-e "{mark}"' for mark in START_MARKS)
    script = (
        f'{_files(host.rpc_port)}; mkdir -p "$d" "$c/rpc-cache"; '
        f'if {_alive(host.rpc_port)}; then echo "running $pid"; exit 0; fi; '
        'touch "$log"; size=$(wc -c < "$log"); '
        'echo "--- $(date) quorum starts the worker" >> "$log"; '
        "if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi; "
        f'(nohup $s {cmd} >> "$log" 2>&1 < /dev/null & echo $! > "$pidf"); '
        'pid=$(cat "$pidf"); echo "started $pid"; echo "$log"; i=0; '
        f"while [ $i -lt {max(1, int(wait * 5))} ]; do "
        'if ! kill -0 $pid 2>/dev/null; then echo exited; tail -n 12 "$log"; exit 0; fi; '
        f'if tail -c +$((size + 1)) "$log" | grep -q {marks}; then echo listening; exit 0; fi; '
        "sleep 0.2; i=$((i + 1)); done; echo waiting"
    )
    result = await session.run(script, timeout=wait + 30)
    lines = str(result.stdout or "").splitlines()
    first = lines[0].split() if lines else []
    if result.exit_status != 0 or len(first) < 2 or not first[1].isdigit():
        raise HostFailure(
            "worker-down", f"starting the worker failed: {str(result.stderr or '').strip()}"
        )
    if first[0] == "running":
        return Started(int(first[1]), "running", "", [])
    log = lines[1] if len(lines) > 1 else ""
    outcome = lines[2] if len(lines) > 2 else "waiting"
    return Started(int(first[1]), outcome, log, lines[3:])


async def stop_worker(session: HostSession, port: int) -> bool:
    """Stop the worker Quorum started on this port; True if there was one."""
    script = (
        f"{_files(port)}; if {_alive(port)}; then kill $pid; "
        "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 $pid 2>/dev/null || break; sleep 0.3; done; "
        'kill -9 $pid 2>/dev/null; rm -f "$pidf"; echo stopped; else rm -f "$pidf"; echo none; fi'
    )
    out = str((await session.run(script)).stdout or "").strip()
    return out == "stopped"


async def log_tail(session: HostSession, port: int, lines: int = LOG_TAIL) -> list[str]:
    script = f'{_files(port)}; echo "$log"; tail -n {lines} "$log" 2>/dev/null'
    out = str((await session.run(script)).stdout or "").splitlines()
    return out
