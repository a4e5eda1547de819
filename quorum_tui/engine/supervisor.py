"""Start and watch the coordinator child process; turn its death into a named reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.coordinator import Job
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.engine.probe import ProbeResult, probe_all
from quorum_tui.errors import QuorumError

NOISE = ("gdb", "ptrace", "backtrace", "No such process", "Could not attach")


async def preflight(workers: Sequence[WorkerRef], timeout: float = 3.0) -> list[ProbeResult]:
    """Probe every worker before anything loads; any failure is named."""
    if not workers:
        return []
    results = await probe_all([w.endpoint for w in workers], timeout)
    bad = [
        f"worker {w.name} ({w.endpoint}) is {r.status}: {r.reason}"
        for w, r in zip(workers, results, strict=True)
        if not r.ok
    ]
    if bad:
        raise QuorumError("; ".join(bad))
    return results


def new_log_path(kind: str = "coordinator") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return paths.ensure(paths.data_dir() / "logs") / f"{kind}-{stamp}-{os.getpid()}.log"


class CoordinatorProcess:
    """One coordinator child: JSON events on its stdout, llama.cpp's log in a file."""

    module = "quorum_tui.engine.coordinator"
    """The child's `python -m` module; engine.measure runs its own child through this class."""

    def __init__(self, job: Job, log_path: Path | None = None) -> None:
        self.job = job
        self.log_path = log_path or new_log_path()
        self.proc: asyncio.subprocess.Process | None = None
        self.last_error: dict[str, Any] | None = None
        self.dead_workers: list[str] = []

    async def start(self) -> None:
        env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONUNBUFFERED="1")
        paths.ensure(self.log_path.parent)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=1 << 20,
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.job.to_json().encode())
        await self.proc.stdin.drain()
        self.proc.stdin.close()

    async def events(self, stall_check: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        """Every event the child writes, until it exits.

        When the child says nothing for `stall_check` seconds, the workers are probed: a worker
        that became unreachable without closing its connection (a host gone from the network)
        would otherwise leave llama.cpp waiting forever, so the child is stopped and the
        worker named.
        """
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), stall_check)
            except TimeoutError:
                if await self._find_dead_workers():
                    await self.stop()
                continue
            if not line:
                break
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "error":
                self.last_error = event
            yield event
        await self.proc.wait()

    async def _find_dead_workers(self) -> list[str]:
        results = await probe_all([w.endpoint for w in self.job.workers], timeout=2.0)
        self.dead_workers = [
            f"worker {w.name} ({w.endpoint}) is {r.status}: {r.reason}"
            for w, r in zip(self.job.workers, results, strict=True)
            if r.status in ("unreachable", "incompatible")
        ]
        return self.dead_workers

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace: float = 3.0) -> None:
        """Terminate the child (SIGTERM, then SIGKILL) and wait for it."""
        if not self.proc or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 5) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        useful = [t for t in text if t.strip() and not any(n in t for n in NOISE)]
        return useful[-lines:]

    async def failure_reason(self) -> str:
        """Why the child stopped: its own error, a dead worker by name, or its last log lines."""
        if self.last_error:
            return str(self.last_error.get("message"))
        code = self.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if self.dead_workers or code:
            dead = self.dead_workers or await self._find_dead_workers()
            if dead:
                return "the coordinator stopped because " + "; ".join(dead)
        tail = self.log_tail(1)
        last = f": {tail[-1].strip()}" if tail else ""
        return f"the coordinator stopped ({how}){last} (log: {self.log_path})"
