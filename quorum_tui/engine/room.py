"""How much memory a process may still use where it runs: the truth, not the machine's total.

llama.cpp's CPU device counts all of a machine's RAM as free, whatever else runs there and
whatever the process's cgroup allows (a container, an LXC guest, a Kubernetes pod, a systemd
slice): a plan trusting it puts more layers on a host than it can hold, and the worker is
OOM-killed during the load. The room here is the lower of the host's MemAvailable and what
the process's memory cgroup still allows (v2 `memory.max`, or v1 `memory.limit_in_bytes`, for
it and every ancestor; its page cache of files, which the kernel drops before it kills,
counts as free), less a headroom for what is not weights, caches or compute buffers (the
process itself, the allocator's slack).

Standard library only: workers on other hosts use it to report their devices' free memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEADROOM_MIN = 64 << 20
HEADROOM_SHARE = 0.05
"""The headroom: 5% of the room's limit, at least 64 MiB."""
UNLIMITED = 1 << 60
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Room:
    """Memory a process here may still use (`free`, headroom taken off) out of `total`."""

    free: int
    total: int
    limited_by: str
    """"the host" (MemAvailable), or the cgroup whose limit binds."""
    headroom: int

    def describe(self) -> str:
        gib = 1 << 30
        return (
            f"{self.free / gib:.1f} GiB free of {self.total / gib:.1f} GiB "
            f"(limited by {self.limited_by}, {self.headroom >> 20} MiB kept as headroom)"
        )


def headroom(total: int) -> int:
    return max(HEADROOM_MIN, int(total * HEADROOM_SHARE))


def room(proc: Path = PROC, cgroups: Path = CGROUP_ROOT) -> Room:
    """This process's room (`proc` and `cgroups` are the filesystems to read: tests)."""
    available, total = _meminfo(proc / "meminfo")
    free, limit, limited_by = available, total, "the host"
    for name, left, cap in _cgroup_limits(proc / "self", cgroups):
        if cap < limit:
            limit = cap
        if left < free:
            free, limited_by = left, f"cgroup {name}"
    keep = headroom(limit)
    return Room(max(free - keep, 0), limit, limited_by, keep)


def _meminfo(path: Path) -> tuple[int, int]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                values[key] = int(fields[0]) * 1024
    except OSError:
        pass
    total = values.get("MemTotal", 0)
    return values.get("MemAvailable", values.get("MemFree", total)), total


def _cgroup_limits(self_dir: Path, cgroups: Path) -> list[tuple[str, int, int]]:
    """(cgroup, bytes it still allows, its limit) for this process's memory cgroup and each
    ancestor that has a limit."""
    try:
        lines = (self_dir / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[tuple[str, int, int]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found += _walk(cgroups, path, _v2)
            found += _walk(cgroups / "unified", path, _v2)
        elif "memory" in controllers.split(","):
            found += _walk(cgroups / "memory", path, _v1)
    return found


Reader = Callable[[Path], "tuple[int, int] | None"]


def _walk(mount: Path, path: str, read: Reader) -> list[tuple[str, int, int]]:
    out = []
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        folder = mount.joinpath(*parts[:depth])
        got = read(folder)
        if got is not None:
            out.append(("/" + "/".join(parts[:depth]), *got))
    return out


def _v2(folder: Path) -> tuple[int, int] | None:
    return _cgroup_room(folder, "memory.max", "memory.current", "")


def _v1(folder: Path) -> tuple[int, int] | None:
    return _cgroup_room(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_")


def _cgroup_room(
    folder: Path, limit_file: str, usage_file: str, prefix: str
) -> tuple[int, int] | None:
    """Room and limit of one cgroup; its file cache counts as free (the kernel reclaims it)."""
    limit = _number(folder / limit_file)
    if limit is None or limit >= UNLIMITED:
        return None
    used = _number(folder / usage_file) or 0
    stat = folder / "memory.stat"
    cache = _stat(stat, f"{prefix}inactive_file") + _stat(stat, f"{prefix}active_file")
    return max(limit - (used - cache), 0), limit


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def oom_kills(folder: Path) -> int:
    """How many processes the OOM killer took in memory cgroup `folder` (v2 or v1)."""
    v2 = _stat(folder / "memory.events", "oom_kill")
    v1 = 0
    try:
        for line in (folder / "memory.oom_control").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                v1 = int(value)
    except OSError:
        pass
    return v2 or v1
