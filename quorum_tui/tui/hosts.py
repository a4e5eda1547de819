"""What the Cluster screen shows about each host, and how a local host is sampled (no Textual)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import psutil

from quorum_tui.engine.probe import ProbeResult, probe
from quorum_tui.engine.room import room

HISTORY = 24
"""Samples kept per host for the sparklines."""

STATES: dict[str, tuple[str, str]] = {
    "ok": ("●", "green"),
    "serving": ("◆", "cyan"),
    "busy": ("◐", "yellow"),
    "starting": ("◌", "yellow"),
    "connecting": ("◌", "yellow"),
    "unknown": ("?", "grey50"),
    "stopped": ("○", "grey50"),
    "incompatible": ("▲", "magenta"),
    "unreachable": ("✖", "red"),
    "down": ("✖", "red"),
    "error": ("✖", "red"),
    "idle": ("○", "grey50"),
    "loading": ("◌", "yellow"),
    "connected": ("◐", "cyan"),
    "installing": ("◌", "yellow"),
    "worker-up": ("●", "green"),
    "worker-down": ("○", "red"),
    "auth-failed": ("✖", "red"),
    "host-key-unknown": ("?", "magenta"),
    "host-key-changed": ("✖", "red"),
}
"""State name -> (glyph, colour); the text is the state name itself."""

COORDINATOR_HOST = "this machine"


@dataclass
class HostStatus:
    """One row of the hosts table."""

    name: str
    address: str
    endpoint: str | None = None
    state: str = "unknown"
    reason: str = ""
    cpu: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    memory: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    mem_used: int | None = None
    mem_total: int | None = None
    free: int | None = None
    rtt_ms: float | None = None

    def add_sample(self, cpu: float | None, used: int | None, total: int | None) -> None:
        if cpu is not None:
            self.cpu.append(cpu)
        if used is not None and total:
            self.mem_used, self.mem_total = used, total
            self.memory.append(100.0 * used / total)


def state_of(name: str) -> tuple[str, str]:
    return STATES.get(name, STATES["unknown"])


@dataclass
class LocalSampler:
    """CPU and memory of local processes and of this machine, from psutil."""

    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def machine(self) -> tuple[float, int, int]:
        vm = psutil.virtual_memory()
        return psutil.cpu_percent(None), int(vm.total - vm.available), int(vm.total)

    def total_memory(self) -> int:
        return int(psutil.virtual_memory().total)

    def process(self, pid: int) -> tuple[float, int] | None:
        """CPU % and resident bytes of one process, or None when it is gone."""
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
            return proc.cpu_percent(None), int(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None


def probe_host(host: HostStatus, timeout: float = 1.0) -> ProbeResult | None:
    return probe(host.endpoint, timeout) if host.endpoint else None


def local_free() -> int:
    """The coordinator's room here, as the deployment counts it (engine.room)."""
    return room().free


def sparkline(values: list[float] | deque[float], width: int = 8, top: float = 100.0) -> str:
    """A text sparkline of the last `width` values on a 0..top scale."""
    bars = "▁▂▃▄▅▆▇█"
    tail = list(values)[-width:]
    out = [bars[min(len(bars) - 1, max(0, int(v / top * (len(bars) - 1) + 0.5)))] for v in tail]
    return "".join(out).rjust(width)
