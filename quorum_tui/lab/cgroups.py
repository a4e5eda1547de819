"""Memory caps for lab hosts: a memory cgroup that everything a host's sshd starts lives in.

cgroup v2 where a cgroup2 hierarchy has the memory controller, else v1's memory hierarchy; the
cap's cgroup is made under this process's own, so it needs no more rights than the lab has.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from quorum_tui.engine.room import CGROUP_ROOT, oom_kills


@dataclass(frozen=True)
class MemoryCap:
    folder: Path
    version: int
    limit: int

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCap:
        """A new memory cgroup `name` under this process's, capped at `limit` bytes."""
        for version, parent in _parents():
            folder = parent / name
            try:
                folder.mkdir(exist_ok=True)
                limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
                (folder / limit_file).write_text(str(limit))
                if version == 2:
                    (folder / "memory.swap.max").write_text("0")
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    folder.rmdir()
                continue
            except OSError as exc:
                with contextlib.suppress(OSError):
                    folder.rmdir()
                raise RuntimeError(f"cannot cap lab memory in {folder}: {exc}") from exc
            return cls(folder, version, limit)
        raise RuntimeError(
            "this machine has no memory cgroup this process can use (v2 with the memory "
            "controller, or v1's memory hierarchy): lab hosts cannot be capped"
        )

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv`, run from inside this cgroup (its children stay there)."""
        procs = shlex.quote(str(self.folder / "cgroup.procs"))
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]

    def enter(self) -> Path:
        """Move this process into the cgroup; returns the folder it came from (`leave`)."""
        source = next((parent for version, parent in _parents() if version == self.version), None)
        if source is None:
            raise RuntimeError("this process is in no memory cgroup of that version")
        (self.folder / "cgroup.procs").write_text(str(os.getpid()))
        return source

    def leave(self, back_to: Path) -> None:
        (back_to / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer took in this cgroup."""
        return oom_kills(self.folder)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.folder / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Delete the cgroup (its processes must be gone)."""
        self.folder.rmdir()


def _parents() -> list[tuple[int, Path]]:
    """Where this process's memory cgroups are: (version, folder), v2 first."""
    try:
        lines = Path(f"/proc/{os.getpid()}/cgroup").read_text().splitlines()
    except OSError:
        return []
    out: list[tuple[int, Path]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                try:
                    has_memory = "memory" in (mount / "cgroup.controllers").read_text().split()
                except OSError:
                    continue
                if has_memory:
                    out.insert(0, (2, mount / rel))
        elif "memory" in controllers.split(","):
            out.append((1, CGROUP_ROOT / "memory" / rel))
    return out
