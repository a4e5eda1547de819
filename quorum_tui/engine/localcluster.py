"""Workers on this machine: `quorum worker` child processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.engine.probe import probe
from quorum_tui.errors import QuorumError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def worker_command(
    port: int, host: str = "127.0.0.1", threads: int = 0, cache: Path | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "quorum_tui", "worker", "--host", host, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += ["--cache", str(cache)] if cache else ["--no-cache"]
    return cmd


def local_worker_command(
    port: int, host: str = "127.0.0.1", threads: int = 0, cache: Path | None = None
) -> list[str]:
    """A worker that ends with the process that started it, so none is ever orphaned."""
    return [*worker_command(port, host, threads, cache), "--exit-with-parent"]


@dataclass
class LocalWorker:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ref(self) -> WorkerRef:
        return WorkerRef(self.name, self.endpoint)

    def alive(self) -> bool:
        return self.process.poll() is None

    def death(self, tail_lines: int = 5) -> str:
        """How the process ended, in words, with the last lines of its log."""
        lines = self.log.read_text(errors="replace").strip().splitlines() if tail_lines else []
        tail = lines[-tail_lines:] if tail_lines else []
        return describe_exit(f"worker {self.name}", self.process.poll(), self.log, tail)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@dataclass
class LocalCluster:
    """A few local workers, started together and stopped together."""

    log_dir: Path
    workers: list[LocalWorker] = field(default_factory=list)
    stopped: bool = False
    """Set by `stop`: a worker added afterwards (a restart still under way) is refused."""

    def start(self, count: int, threads: int = 0, cache: Path | None = None) -> None:
        for index in range(count):
            self.add(f"w{len(self.workers) + 1}", threads=threads, cache=cache, wait=False)
            del index
        for worker in self.workers:
            wait_ready(worker)

    def add(
        self,
        name: str,
        threads: int = 0,
        cache: Path | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        port: int = 0,
    ) -> LocalWorker:
        if self.stopped:
            raise QuorumError(f"the local workers were stopped: {name} is not started again")
        port = port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}-{port}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*(prefix or []), *local_worker_command(port, threads=threads, cache=cache)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {}), "QUORUM_CACHE_DIR": str(self.log_dir)},
                start_new_session=True,
            )
        worker = LocalWorker(name, port, process, log)
        self.workers.append(worker)
        if wait:
            wait_ready(worker)
        return worker

    def restart(self, worker: LocalWorker) -> LocalWorker:
        """A new process for a worker that died, on the same port (so the same endpoint)."""
        worker.kill()
        self.workers.remove(worker)
        return self.add(worker.name, port=worker.port)

    @property
    def refs(self) -> list[WorkerRef]:
        return [w.ref for w in self.workers]

    def stop(self) -> None:
        self.stopped = True
        for worker in self.workers:
            worker.kill(signal.SIGTERM)
        self.workers.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(worker: LocalWorker, timeout: float = 60.0) -> None:
    """Wait until the worker answers HELLO; fail with its log tail if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise QuorumError(worker.death())
        if probe(worker.endpoint, timeout=1.0).ok:
            return
        time.sleep(0.1)
    raise QuorumError(f"worker {worker.name} did not answer within {timeout:g}s")
