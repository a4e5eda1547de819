"""Start and watch the coordinator (a llama-server child); turn its death into a named reason.

llama.cpp aborts the whole process when a worker fails, which is why the model only ever
loads in this child. Its output goes to a log file; the realized assignment is read from that
log once the server answers, and a server that loaded anything else than the plan is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from quorum_tui import paths
from quorum_tui.engine.cpucheck import cpu_verdict, refuse_in_use
from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.llama_server import (
    BINARY_ENV,
    ServerBinary,
    ServerOptions,
    server_argv,
    server_binary,
)
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.engine.loadlog import differences, realized_assignment
from quorum_tui.engine.plan import LayerPlan, LlamaParams, WorkerRef
from quorum_tui.engine.probe import ProbeResult, probe_all
from quorum_tui.engine.serverlog import LogPump
from quorum_tui.errors import QuorumError
from quorum_tui.wire import Metrics, parse_metrics

NOISE = ("gdb", "ptrace", "backtrace", "No such process", "Could not attach")
LOG_ERROR = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ E (.*)|(error\b.*))$")
"""An error line of llama.cpp's log (`0.00.049.646 E text`, or an argument's `error ...`)."""
RPC_ABORTS = ("Remote RPC server crashed", "Failed to connect to", "RPC handshake failed")
"""What ggml-rpc.cpp aborts with when a worker's connection fails."""
POLL = 0.05
LIVENESS_TIMEOUT = 5.0
"""Seconds llama-server may take to answer /metrics before the workers are probed."""


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
    """A log file of its own for each child, even several in one second (a failover)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = paths.ensure(paths.data_dir() / "logs")
    path, n = logs / f"{kind}-{stamp}-{os.getpid()}.log", 1
    while path.exists():
        path, n = logs / f"{kind}-{stamp}-{os.getpid()}-{n}.log", n + 1
    path.touch()
    return path


@dataclass(frozen=True)
class Loading:
    """llama-server started and is loading the model; `cpu` names its CPU kernels."""

    plan: LayerPlan
    argv: tuple[str, ...]
    log_path: Path
    cpu: str


@dataclass(frozen=True)
class Loaded:
    """The model is loaded; `realized` is llama.cpp's assignment (stage per layer, output last)."""

    plan: LayerPlan
    realized: tuple[int, ...]
    load_s: float


@dataclass(frozen=True)
class Ready:
    """llama-server answers at `url` (its base URL, without /v1)."""

    url: str


CoordinatorEvent = Loading | Loaded | Ready
Explain = Callable[[WorkerRef], Awaitable[str | None]]


def _refuse_cpu_variant() -> str:
    """llama-server died of SIGILL with the CPU variant the check had passed: refuse it."""
    build = LlamaBuild.installed()
    variant = cpu_verdict(build).variant
    return refuse_in_use(build, variant, "llama-server died of SIGILL while using it")


def _die_with_parent() -> None:
    """Linux: SIGKILL the child when its parent dies, so no coordinator is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class CoordinatorProcess:
    """One llama-server child serving one plan; its whole output in a log file."""

    def __init__(
        self,
        model: Path | str,
        plan: LayerPlan,
        options: ServerOptions,
        device_counts: Sequence[int] | None = None,
        log_path: Path | None = None,
        params: LlamaParams | None = None,
        binary: ServerBinary | None = None,
        explain: Explain | None = None,
    ) -> None:
        self.model = Path(model)
        self.plan = plan
        self.options = options
        self.device_counts = list(device_counts) if device_counts else None
        binary = binary or server_binary()
        self.cpu = binary.cpu
        """The CPU kernels llama-server runs (None: a binary of the user's)."""
        self.explain = explain
        """How a worker found dead ended, when whoever started it knows (None otherwise)."""
        self.argv = server_argv(model, plan, options, device_counts, params, binary.path)
        self.log_path = log_path or new_log_path()
        self.proc: asyncio.subprocess.Process | None = None
        self.last_error: str | None = None
        self.dead_workers: list[str] = []
        self.dead: list[WorkerRef] = []
        """The workers found unreachable when the child stopped, named in `dead_workers`."""
        self.realized: tuple[int, ...] | None = None
        self.mismatch: list[str] = []
        self.pump: LogPump | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    async def start(self) -> None:
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        folder = Path(self.argv[0]).parent
        paths.ensure(self.log_path.parent)
        read_end, write_end = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                env=env,
                cwd=folder,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.pump = LogPump(read_end, self.log_path)
        self.pump.start()

    async def events(self, stall_check: float = 10.0) -> AsyncGenerator[CoordinatorEvent, None]:
        """Loading, Loaded and Ready as they happen, then nothing until the child exits.

        While serving, llama-server's main loop is asked for /metrics every `stall_check`
        seconds: a worker that left the network without closing its connection would
        otherwise leave it waiting forever. When the loop does not answer, the workers are
        probed, and one that is unreachable is named and the child stopped.
        """
        assert self.proc is not None
        started = time.perf_counter()
        cpu = self.cpu.summary() if self.cpu else "CPU kernels: those of " + self.argv[0]
        yield Loading(self.plan, tuple(self.argv), self.log_path, cpu)
        headers = (
            {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        )
        limits = httpx.Limits(keepalive_expiry=2.0)  # llama-server closes idle ones after 5 s
        async with httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=2.0, limits=limits
        ) as http:
            if not await self._wait_healthy(http, stall_check):
                await self.proc.wait()
                return
            realized = self._read_assignment()
            if realized is None:
                await self.stop()
                return
            assert self.pump is not None
            self.pump.quiet = True
            yield Loaded(self.plan, realized, time.perf_counter() - started)
            yield Ready(self.url)
            await self._watch(http, stall_check)
        await self.proc.wait()

    async def _wait_healthy(self, http: httpx.AsyncClient, stall_check: float) -> bool:
        """Poll /health until it answers 200 or the child exits; workers that vanish while
        the model loads are named, as while serving."""
        assert self.proc is not None
        probed = time.monotonic()
        while self.proc.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), POLL)
            if time.monotonic() - probed > stall_check:
                probed = time.monotonic()
                if await self._find_dead_workers():
                    await self.stop(grace=0.5)
        return False

    def _read_assignment(self) -> tuple[int, ...] | None:
        lines = self.log_path.read_text(errors="replace").splitlines()
        try:
            realized = realized_assignment(
                lines, self.plan.n_layers, self.plan.workers, self.device_counts
            )
        except QuorumError as exc:
            self.last_error = f"llama.cpp did not load the plan: {exc}"
            return None
        self.realized = tuple(realized)
        self.mismatch = differences(self.plan, realized)
        if self.mismatch:
            self.last_error = f"llama.cpp did not load the plan: {'; '.join(self.mismatch)}"
            return None
        return self.realized

    async def _watch(self, http: httpx.AsyncClient, stall_check: float) -> None:
        """Every `stall_check` s: a request in progress with no new llama_decode call since the
        last look (or no answer at all) gets the workers probed; an unreachable one is named
        and the child stopped."""
        assert self.proc is not None
        last: float | None = None
        while self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), stall_check)
                return
            except TimeoutError:
                pass
            try:
                reply = await http.get("/metrics", timeout=LIVENESS_TIMEOUT)
                metrics = parse_metrics(reply.text)
            except httpx.HTTPError:
                metrics = Metrics()
            decodes = metrics.decodes
            busy = metrics.processing is None or metrics.processing > 0
            stalled = decodes is None or (busy and decodes == last)
            last = decodes
            if stalled and self.proc.returncode is None and await self._find_dead_workers():
                await self.stop(grace=0.5)

    async def _find_dead_workers(self) -> list[str]:
        workers = self.plan.workers
        results = await probe_all([w.endpoint for w in workers], timeout=2.0)
        gone = [
            (w, r) for w, r in zip(workers, results, strict=True)
            if r.status in ("unreachable", "incompatible")
        ]  # fmt: skip
        self.dead = [w for w, _ in gone]
        named = []
        for w, r in gone:
            text = f"worker {w.name} ({w.endpoint}) is {r.status}: {r.reason}"
            how = await self.explain(w) if self.explain else None
            named.append(f"{text} ({how})" if how else text)
        self.dead_workers = named
        return self.dead_workers

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace: float = 5.0) -> None:
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

    def lost_a_worker(self) -> bool:
        """Whether llama.cpp aborted over an RPC connection (a worker died, or was restarted
        under it), rather than crashing on its own."""
        return any(mark in line for line in self.log_tail(20) for mark in RPC_ABORTS)

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last `lines` lines of llama.cpp's log that say something."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        useful = [t for t in text if t.strip() and not any(n in t for n in NOISE)]
        return useful[-lines:]

    async def failure_reason(self) -> str:
        """Why the child stopped: a refused plan, a dead worker by name, or its last log line."""
        if self.last_error:
            return self.last_error
        if self.pump is not None:
            await asyncio.to_thread(self.pump.join, 2.0)
        code = self.returncode
        if self.dead_workers or code:
            dead = self.dead_workers or await self._find_dead_workers()
            if dead:
                return "the coordinator stopped because " + "; ".join(dead)
        action = ""
        if code == -signal.SIGILL and not os.environ.get(BINARY_ENV):
            action = await asyncio.to_thread(_refuse_cpu_variant)
        return describe_exit(
            "the coordinator (llama-server)", code, self.log_path, self.first_error(), action
        )

    def first_error(self, lines: int = 200) -> list[str]:
        """The first of llama.cpp's error lines near the end of its log (the cause; the ones
        after it report the failure, or its usage text follows), without its time stamp;
        else the last line."""
        tail = self.log_tail(lines)
        errors = [m[1] or m[2] for t in tail if (m := LOG_ERROR.match(t.strip()))]
        return errors[:1] or tail[-1:]
