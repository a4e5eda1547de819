"""What a host has: one short POSIX sh command that prints `key=value` lines and leaves nothing
running."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from quorum_tui import __version__
from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.sessions import HostSession
from quorum_tui.engine.probe import PROTOCOL

CACHE_SH = 'c="${QUORUM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/quorum}"'
"""The remote cache dir in sh, resolved as Quorum's own paths.cache_dir() does."""

PROTOCOL_TEXT = ".".join(map(str, PROTOCOL))
RUNTIME_NAME = f"runtime-{__version__}"

PROBE_SH = (
    'echo "os=$(uname -s)"; echo "release=$(uname -r)"; echo "arch=$(uname -m)"; '
    'echo "cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null)"; '
    "[ -r /proc/meminfo ] && sed -n -e 's/^MemTotal: *\\([0-9]*\\) kB/mem_total=\\1/p' "
    "-e 's/^MemAvailable: *\\([0-9]*\\) kB/mem_available=\\1/p' /proc/meminfo; "
    '[ -r /proc/loadavg ] && echo "load=$(cut -d" " -f1-3 /proc/loadavg)"; '
    "command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,"
    "memory.free --format=csv,noheader,nounits 2>/dev/null | sed 's/^/gpu=/'; "
    'echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)"; '
    f'rt="$c/{RUNTIME_NAME}"; py="$rt/worker"; p=$(command -v python3 2>/dev/null); '
    'if [ -n "$p" ]; then echo "python_path=$p"; echo "python=$("$p" -V 2>&1)"; fi; '
    'echo "cache_dir=$c"; echo "home=$HOME"; '
    '[ -f "$rt/runtime.json" ] && echo "runtime=$(cat "$rt/runtime.json")"; '
)
"""Facts as `key=value` lines, in POSIX sh: no remote Python process (the local side parses).

Expects `$c` (CACHE_SH); leaves `$rt` (the runtime dir) and `$py` (its worker launcher) set.
"""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total: int
    free: int


@dataclass(frozen=True)
class HostFacts:
    """The probe's answer."""

    os: str
    arch: str
    cores: int
    mem_total: int
    mem_available: int
    load: tuple[float, float, float]
    python: str | None
    python_path: str | None
    cache_dir: str
    runtime: dict[str, Any] | None
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)
    release: str = ""
    worker_pid: int | None = None
    glibc: str = ""
    """The C library's version when it is glibc ("2.36"), else empty."""

    @property
    def runtime_dir(self) -> str:
        return f"{self.cache_dir}/{RUNTIME_NAME}"

    @property
    def runtime_ok(self) -> bool:
        """A Quorum runtime of this version and RPC protocol is installed."""
        rt = self.runtime or {}
        return rt.get("protocol") == PROTOCOL_TEXT and bool(rt.get("rpc"))

    @property
    def launcher(self) -> str:
        """The runtime's worker command (sh), written by its install."""
        return f"{self.runtime_dir}/worker"

    def summary(self) -> str:
        gpus = ", ".join(g.name for g in self.gpus) or "no GPU"
        runtime = f"runtime {PROTOCOL_TEXT}" if self.runtime_ok else "no runtime"
        return (
            f"{self.os} {self.arch}, {self.cores} cores, "
            f"{self.mem_available / 2**30:.1f}/{self.mem_total / 2**30:.1f} GiB free, "
            f"load {self.load[0]:.2f}, {gpus}, Python {self.python or 'missing'}, {runtime}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtime_ok"] = self.runtime_ok
        return data


def worker_files(port: int) -> str:
    """sh setting $c, $d (workers dir), $pidf and $log for the worker on `port`."""
    return f'{CACHE_SH}; d="$c/workers"; pidf="$d/worker-{port}.pid"; log="$d/worker-{port}.log"'


def worker_alive(port: int) -> str:
    """sh condition: the pid file's process lives and its command line names `port` (sets $pid)."""
    return (
        '[ -f "$pidf" ] && pid=$(cat "$pidf") && kill -0 "$pid" 2>/dev/null && '
        f"ps -o args= -p \"$pid\" | grep -qE -e '(--port|-p) {port}( |$)'"
    )


def probe_command(port: int | None = None) -> str:
    """The probe; with `port`, it also prints `worker=PID` (and sets $w) when Quorum's worker
    runs there."""
    worker = f'if {worker_alive(port)}; then w=$pid; echo "worker=$pid"; fi; ' if port else ""
    return f"{worker_files(port or 0)}; w=; {PROBE_SH}{worker}echo probe=end"


def parse_facts(lines: list[str]) -> HostFacts:
    """HostFacts from the probe's `key=value` lines (other lines are ignored)."""
    data: dict[str, str] = {}
    gpus: list[GpuInfo] = []
    for line in lines:
        key, sep, value = line.rstrip("\r").partition("=")
        if not sep:
            continue
        if key == "gpu":
            with contextlib.suppress(ValueError):
                name, total, free = (x.strip() for x in value.rsplit(",", 2))
                gpus.append(GpuInfo(name, int(total) << 20, int(free) << 20))
        elif key == "probe" and value == "end":
            break
        else:
            data.setdefault(key, value)
    if "os" not in data or "cache_dir" not in data:
        raise ValueError("no facts")
    runtime: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        runtime = json.loads(data.get("runtime", "null"))
    load = ([float(x) for x in data.get("load", "").split() if _number(x)] + [0.0] * 3)[:3]
    python = data.get("python", "").removeprefix("Python ").strip() or None
    return HostFacts(
        os=data["os"],
        release=data.get("release", ""),
        arch=data.get("arch", ""),
        cores=_int(data.get("cores")) or 1,
        mem_total=_int(data.get("mem_total")) * 1024,
        mem_available=_int(data.get("mem_available")) * 1024,
        load=(load[0], load[1], load[2]),
        python=python if python and python[0].isdigit() else None,
        python_path=data.get("python_path") if python and python[0].isdigit() else None,
        cache_dir=data["cache_dir"],
        runtime=runtime if isinstance(runtime, dict) else None,
        gpus=tuple(gpus),
        worker_pid=_int(data.get("worker")) or None,
        glibc=data.get("glibc", "").removeprefix("glibc ").strip(),
    )


def _int(text: str | None) -> int:
    return int(text) if text and text.strip().isdigit() else 0


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def probe_failure(status: int | None, lines: list[str]) -> HostFailure:
    tail = [line.rstrip("\r") for line in lines if line.strip()][-3:]
    return HostFailure(
        "worker-down",
        f"the host probe failed (exit {status}): {' | '.join(tail) or 'no output'}; "
        "a Quorum worker needs a POSIX shell on the host",
    )


async def probe_host(
    session: HostSession, port: int | None = None, timeout: float = 30.0
) -> HostFacts:
    """The host's facts; with `port`, also the pid of the Quorum worker running there."""
    result = await session.run(probe_command(port), timeout=timeout, pty=True)
    lines = str(result.stdout or "").splitlines()
    try:
        return parse_facts(lines)
    except ValueError:
        raise probe_failure(result.exit_status, lines) from None
