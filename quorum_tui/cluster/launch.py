"""Start, check and stop detached workers on a host (POSIX sh over SSH, pid files).

Each worker Quorum starts has `workers/worker-<port>.pid` and `workers/worker-<port>.log`
under the remote cache dir; `stop` only signals a process whose pid file Quorum wrote and
whose command line still names that port.

A bring-up needs one remote command when all goes well (`bring_up_script`): the probe, the
worker's status and, when no worker runs and the runtime is current, the worker's start.
Every remote command costs a login shell on the host (sshd runs commands through it, with the
user's rc files), so the common path keeps their number to one.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from quorum_tui.cluster import hostprobe
from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.hostprobe import PROTOCOL_TEXT, HostFacts, worker_alive, worker_files
from quorum_tui.cluster.inventory import HostConfig
from quorum_tui.cluster.sessions import HostSession
from quorum_tui.engine.exits import describe_exit, shell_status_code

LOG_TAIL = 12
START_WAIT = 10.0
POLL = 0.05

WorkerStatus = Literal["running", "stopped"]


@dataclass(frozen=True)
class RemoteWorker:
    status: WorkerStatus
    pid: int | None
    detail: str


def worker_command(host: HostConfig, bind: str, launcher_sh: str | None) -> str:
    """The remote command line of the worker (sh syntax, uses $c and $log).

    `launcher_sh` is the runtime's worker command as a sh word (already quoted).
    """
    port = host.rpc_port
    if host.rpc_server:
        cmd = f"{shlex.quote(host.rpc_server)} -H {bind} -p {port} -c"
        return cmd + (f" -t {host.threads}" if host.threads else "")
    assert launcher_sh is not None
    cmd = f'{launcher_sh} --host {bind} --port {port} --cache "$c/rpc-cache" --log "$log"'
    return cmd + (f" --threads {host.threads}" if host.threads else "")


async def worker_status(session: HostSession, port: int) -> RemoteWorker:
    script = (
        f'{worker_files(port)}; if {worker_alive(port)}; then echo "running $pid"; '
        "else echo stopped; fi"
    )
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


START_LINE = "quorum starts the worker"
"""Ends the line written to the log before each start."""
EXIT_MARK = "quorum: the worker exited with status "
"""What the runtime's worker command writes to the log when the worker ends."""


def exit_status(lines: list[str]) -> int | None:
    """The return code (negative for a signal) of the last start's worker in log `lines`."""
    for line in reversed(lines):
        text = line.rstrip("\r")
        if text.startswith(EXIT_MARK) and text[len(EXIT_MARK) :].strip().isdigit():
            return shell_status_code(int(text[len(EXIT_MARK) :]))
        if text.endswith(START_LINE):
            return None
    return None


START_MARKS = ("quorum worker on", "Starting RPC server")
"""Printed just before the server binds: by `quorum worker`, and by ggml (upstream binaries)."""


def start_sh(cmd: str, wait: float = START_WAIT) -> str:
    """sh (after `worker_files`) that starts `cmd` detached and waits up to `wait` s for it to
    serve or die; prints `start=started PID`, `log=`, `outcome=` and, if it died, `tail=` lines.

    The worker is double-forked (setsid, nohup) so it outlives the SSH session and is reaped
    by init.
    """
    marks = " ".join(f'-e "{mark}"' for mark in START_MARKS)
    return (
        'mkdir -p "$d" "$c/rpc-cache"; touch "$log"; size=$(wc -c < "$log"); '
        f'echo "--- $(date) {START_LINE}" >> "$log"; '
        "if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi; "
        f'(nohup $s {cmd} >> "$log" 2>&1 < /dev/null & echo $! > "$pidf"); '
        'pid=$(cat "$pidf"); echo "start=started $pid"; echo "log=$log"; i=0; '
        f"while [ $i -lt {max(1, int(wait / POLL))} ]; do "
        "if ! kill -0 $pid 2>/dev/null; then echo outcome=exited; "
        f'tail -n {LOG_TAIL} "$log" | sed "s/^/tail=/"; exit 0; fi; '
        f'if tail -c +$((size + 1)) "$log" | grep -q {marks}; then echo outcome=listening; '
        f"exit 0; fi; sleep {POLL}; i=$((i + 1)); done; echo outcome=waiting"
    )


def parse_start(lines: list[str]) -> Started | None:
    """The start section of a script's output; None when it started nothing."""
    values: dict[str, str] = {}
    tail: list[str] = []
    for line in lines:
        key, sep, value = line.rstrip("\r").partition("=")
        if key == "tail" and sep:
            tail.append(value)
        elif sep and key in ("start", "log", "outcome"):
            values.setdefault(key, value)
    what, _, pid = values.get("start", "").partition(" ")
    if what not in ("running", "started") or not pid.isdigit():
        return None
    if what == "running":
        return Started(int(pid), "running", "", [])
    return Started(int(pid), values.get("outcome", "waiting"), values.get("log", ""), tail)


async def start_worker(
    session: HostSession, bind: str, launcher: str | None, wait: float = START_WAIT
) -> Started:
    """Start the worker detached and wait (up to `wait` s) until it starts serving or dies.

    One remote command; a running worker is left alone ("running").
    """
    host = session.host
    cmd = worker_command(host, bind, shlex.quote(launcher) if launcher else None)
    script = (
        f"{worker_files(host.rpc_port)}; "
        f'if {worker_alive(host.rpc_port)}; then echo "start=running $pid"; exit 0; fi; '
        + start_sh(cmd, wait)
    )
    result = await session.run(script, timeout=wait + 30)
    started = parse_start(str(result.stdout or "").splitlines())
    if result.exit_status != 0 or started is None:
        raise HostFailure(
            "worker-down", f"starting the worker failed: {str(result.stderr or '').strip()}"
        )
    return started


def runtime_ready_sh(app_hash: str, llama_id: str) -> str:
    """sh condition (after the probe): runtime.json names this protocol, RPC, code hash and
    shipped build (or a build compiled on the host).

    Matches what the install script's json.dump writes; a mismatch only costs the bring-up
    a second command, the authoritative check being `runtime.runtime_current` on the facts.
    """
    needles = (f'"protocol": "{PROTOCOL_TEXT}"', '"rpc": true', f'"app": "{app_hash}"')
    checks = "; ".join(f"case $j in *{shlex.quote(n)}*) ;; *) j= ;; esac" for n in needles)
    build = shlex.quote(f'"llama": "{llama_id}"'), shlex.quote('"kind": "source"')
    checks += f"; case $j in *{build[0]}*|*{build[1]}*) ;; *) j= ;; esac"
    return f'{{ j=$(cat "$rt/runtime.json" 2>/dev/null); {checks}; [ -n "$j" ] && [ -x "$py" ]; }}'


@dataclass(frozen=True)
class BringUpAnswer:
    """The one bring-up command's answer: the host's facts and what it did about the worker."""

    facts: HostFacts
    started: Started | None


def bring_up_script(
    host: HostConfig, bind: str, app_hash: str, llama_id: str, wait: float = START_WAIT
) -> str:
    """Probe, then start the worker unless one runs or the runtime must be installed first."""
    if host.rpc_server:
        ready = f"[ -x {shlex.quote(host.rpc_server)} ]"
        cmd = worker_command(host, bind, None)
    else:
        ready = runtime_ready_sh(app_hash, llama_id)
        cmd = worker_command(host, bind, '"$py"')
    return (
        f"{hostprobe.probe_command(host.rpc_port)}; "
        f'if [ -n "$w" ]; then echo "start=running $w"; elif {ready}; then {start_sh(cmd, wait)}; '
        "else echo start=none; fi"
    )


async def probe_and_start(
    session: HostSession, bind: str, app_hash: str, llama_id: str, wait: float = START_WAIT
) -> BringUpAnswer:
    """Run `bring_up_script` (with a pty, as the connection's first command: see `tunnels`)."""
    script = bring_up_script(session.host, bind, app_hash, llama_id, wait)
    result = await session.run(script, timeout=wait + 30, pty=True)
    lines = str(result.stdout or "").splitlines()
    try:
        facts = hostprobe.parse_facts(lines)
    except ValueError:
        raise hostprobe.probe_failure(result.exit_status, lines) from None
    end = next(i for i, line in enumerate(lines) if line.rstrip("\r") == "probe=end")
    return BringUpAnswer(facts, parse_start(lines[end + 1 :]))


async def stop_worker(session: HostSession, port: int) -> bool:
    """Stop the worker Quorum started on this port; True if there was one."""
    script = (
        f"{worker_files(port)}; if {worker_alive(port)}; then kill $pid; "
        "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 $pid 2>/dev/null || break; sleep 0.3; done; "
        'kill -9 $pid 2>/dev/null; rm -f "$pidf"; echo stopped; else rm -f "$pidf"; echo none; fi'
    )
    out = str((await session.run(script)).stdout or "").strip()
    return out == "stopped"


async def worker_end(session: HostSession, port: int) -> str | None:
    """How the worker on `port` last ended, in words, from its log (None: it does not say)."""
    tail = await log_tail(session, port)
    if not tail:
        return None
    code = exit_status(tail[1:])
    return describe_exit("the worker", code, tail[0]) if code is not None else None


async def log_tail(session: HostSession, port: int, lines: int = LOG_TAIL) -> list[str]:
    script = f'{worker_files(port)}; echo "$log"; tail -n {lines} "$log" 2>/dev/null'
    out = str((await session.run(script)).stdout or "").splitlines()
    return out
