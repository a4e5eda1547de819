"""Live load of every host over its SSH connection, and of the coordinator itself (psutil).

Workers serve one client at a time, so telemetry never goes over RPC: each sample is one short
remote command reading /proc.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.sessions import HostSession

COORDINATOR = "coordinator"
SAMPLE_SH = (
    "head -n1 /proc/stat; sleep {window}; head -n1 /proc/stat; "
    "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; cat /proc/loadavg"
)


@dataclass(frozen=True)
class HostSample:
    """One host at one moment; `error` set (and numbers zero) when sampling failed."""

    host: str
    time: float
    cpu_percent: float
    mem_total: int
    mem_available: int
    load: tuple[float, float, float]
    error: str | None = None

    @property
    def mem_used(self) -> int:
        return self.mem_total - self.mem_available

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mem_used"] = self.mem_used
        return data


def _cpu_times(line: str) -> tuple[int, int]:
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def parse_sample(host: str, text: str) -> HostSample:
    lines = text.strip().splitlines()
    total0, idle0 = _cpu_times(lines[0])
    total1, idle1 = _cpu_times(lines[1])
    busy = (total1 - total0) - (idle1 - idle0)
    cpu = 100.0 * busy / (total1 - total0) if total1 > total0 else 0.0
    mem = {}
    for line in lines[2:4]:
        key, value = line.split(":", 1)
        mem[key] = int(value.split()[0]) * 1024
    load = tuple(float(x) for x in lines[4].split()[:3])
    return HostSample(
        host,
        time.time(),
        cpu,
        mem["MemTotal"],
        mem["MemAvailable"],
        load,  # type: ignore[arg-type]
    )


async def sample_host(session: HostSession, window: float = 0.5) -> HostSample:
    name = session.host.name
    try:
        result = await session.run(SAMPLE_SH.format(window=window), timeout=window + 10)
        if result.exit_status != 0:
            raise HostFailure("unreachable", str(result.stderr or "").strip() or "sampling failed")
        return parse_sample(name, str(result.stdout))
    except (HostFailure, ValueError, IndexError, KeyError) as exc:
        return HostSample(name, time.time(), 0.0, 0, 0, (0.0, 0.0, 0.0), str(exc))


async def sample_local(window: float = 0.5) -> HostSample:
    psutil.cpu_percent(None)
    await asyncio.sleep(window)
    cpu = psutil.cpu_percent(None)
    mem = psutil.virtual_memory()
    return HostSample(
        COORDINATOR, time.time(), cpu, int(mem.total), int(mem.available), os.getloadavg()
    )


async def sample_all(
    sessions: Sequence[HostSession], window: float = 0.5, local: bool = True
) -> list[HostSample]:
    """The coordinator (first, when `local`) and every host, sampled at once."""
    jobs = [sample_host(s, window) for s in sessions]
    if local:
        jobs.insert(0, sample_local(window))
    return list(await asyncio.gather(*jobs))


async def watch(
    sessions: Sequence[HostSession], interval: float = 3.0, local: bool = True
) -> AsyncIterator[list[HostSample]]:
    """A round of samples every `interval` seconds, until the consumer stops iterating."""
    while True:
        started = time.monotonic()
        yield await sample_all(sessions, local=local)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
