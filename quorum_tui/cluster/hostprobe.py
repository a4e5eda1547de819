"""What a host has: one short remote command that prints JSON and leaves nothing running."""

from __future__ import annotations

import json
import shlex
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

PROBE_SCRIPT = r"""
import json, os, platform, re, shutil, subprocess, sys
cache = os.environ.get("QUORUM_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quorum")
mem = {}
try:
    for line in open("/proc/meminfo"):
        k, v = line.split(":", 1)
        mem[k] = int(v.split()[0]) * 1024
except OSError:
    pass
gpus = []
if shutil.which("nvidia-smi"):
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
        for row in out.strip().splitlines():
            name, total, free = [x.strip() for x in row.split(",")]
            gpus.append({"name": name, "total": int(total) << 20, "free": int(free) << 20})
    except Exception:
        pass
worker = None
port = sys.argv[1] if len(sys.argv) > 1 else ""
if port:
    try:
        pid = int(open(os.path.join(cache, "workers", "worker-%s.pid" % port)).read())
        os.kill(pid, 0)
        args = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True,
                              text=True).stdout
        if re.search(r"(--port|-p) %s( |$)" % port, args, re.M):
            worker = pid
    except (OSError, ValueError):
        pass
runtime = None
try:
    runtime = json.load(open(os.path.join(cache, RUNTIME_NAME, "runtime.json")))
except (OSError, ValueError):
    pass
print(json.dumps({
    "os": platform.system(), "release": platform.release(), "arch": platform.machine(),
    "cores": os.cpu_count(), "mem_total": mem.get("MemTotal"),
    "mem_available": mem.get("MemAvailable"), "load": list(os.getloadavg()),
    "gpus": gpus, "python": platform.python_version(), "python_path": sys.executable,
    "cache_dir": cache, "runtime": runtime, "home": os.path.expanduser("~"), "worker": worker,
}))
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

    @property
    def runtime_dir(self) -> str:
        return f"{self.cache_dir}/{RUNTIME_NAME}"

    @property
    def runtime_ok(self) -> bool:
        """A Quorum runtime of this version and RPC protocol is installed."""
        rt = self.runtime or {}
        return rt.get("protocol") == PROTOCOL_TEXT and bool(rt.get("rpc"))

    @property
    def runtime_python(self) -> str:
        return f"{self.runtime_dir}/venv/bin/python"

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


def probe_command(port: int | None = None) -> str:
    """The probe, run by the runtime's python when there is one (no PATH shims to go through)."""
    script = PROBE_SCRIPT.replace("RUNTIME_NAME", repr(RUNTIME_NAME))
    runtime_python = f'"$c/{RUNTIME_NAME}/venv/bin/python"'
    return (
        f'{CACHE_SH}; p={runtime_python}; [ -x "$p" ] || p=python3; '
        f'"$p" -c {shlex.quote(script)}' + (f" {port}" if port else "")
    )


async def probe_host(
    session: HostSession, port: int | None = None, timeout: float = 30.0
) -> HostFacts:
    """The host's facts; with `port`, also the pid of the Quorum worker running there."""
    result = await session.run(probe_command(port), timeout=timeout, pty=True)
    out = str(result.stdout or "")
    if result.exit_status != 0:
        err = (str(result.stderr or "") + out).strip().splitlines()[-3:]
        raise HostFailure(
            "worker-down",
            f"the host probe failed (exit {result.exit_status}): {' | '.join(err)}; "
            "a Quorum worker needs python3 on the host",
        )
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostFailure(
            "worker-down", f"the host probe printed no JSON: {out[-200:]!r}"
        ) from None
    return HostFacts(
        os=data["os"],
        release=data.get("release", ""),
        arch=data["arch"],
        cores=int(data["cores"] or 1),
        mem_total=int(data["mem_total"] or 0),
        mem_available=int(data["mem_available"] or 0),
        load=tuple(data["load"]),
        python=data["python"],
        python_path=data["python_path"],
        cache_dir=data["cache_dir"],
        runtime=data["runtime"],
        gpus=tuple(GpuInfo(**g) for g in data["gpus"]),
        worker_pid=data.get("worker"),
    )
