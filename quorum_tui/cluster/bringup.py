"""Bring every host of a cluster file up at once: connect, probe, install, launch, tunnel.

Each host runs its own pipeline; a host that fails stops at its failure state with a reason
and never delays the others beyond its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from quorum_tui.cluster import launch
from quorum_tui.cluster.events import (
    EventCallback,
    HostEvent,
    HostFailure,
    HostKeyPrompt,
    HostKeyQuestion,
    HostState,
)
from quorum_tui.cluster.hostprobe import PROTOCOL_TEXT, HostFacts, probe_host
from quorum_tui.cluster.inventory import HostConfig, Inventory
from quorum_tui.cluster.runtime import app_tarball, ensure_runtime, runtime_current
from quorum_tui.cluster.sessions import HostSession, connect
from quorum_tui.cluster.shipped import llama_archive
from quorum_tui.cluster.tunnels import Tunnel, open_openssh_tunnel, open_tunnel
from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.engine.probe import probe_async
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged

log = logging.getLogger(__name__)

HELLO_RETRY = 0.05
TUNNEL_SETTLE = 2.0
"""Seconds an `ssh` tunnel stays open at least. It runs a command, so the host starts a login
shell that reads the user's rc files; hanging up while they run can leave their locks behind
(pyenv's rehash lock then makes every later login shell on that host wait 60 s)."""
DIRECT_WARNING = (
    "the RPC protocol has no authentication and no encryption: anyone who can reach "
    '{endpoint} can use this worker (prefer transport = "tunnel")'
)


@dataclass
class BringUpOptions:
    accept_new_host_keys: bool = False
    prompt: HostKeyPrompt | None = None
    on_event: EventCallback | None = None
    connect_timeout: float | None = None
    worker_timeout: float = 90.0


@dataclass
class HostResult:
    """Where one host ended up."""

    host: HostConfig
    state: HostState = "connecting"
    reason: str = ""
    session: HostSession | None = None
    facts: HostFacts | None = None
    endpoint: str | None = None
    tunnel: Tunnel | None = None
    tunnel_opened: float = 0.0
    pid: int | None = None
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "worker-up"

    @property
    def ref(self) -> WorkerRef:
        assert self.endpoint is not None
        return WorkerRef(self.host.name, self.endpoint)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.host.name,
            "address": self.host.address,
            "state": self.state,
            "reason": self.reason,
            "endpoint": self.endpoint,
            "transport": self.host.transport,
            "pid": self.pid,
            "reused": self.reused,
            "facts": self.facts.to_json() if self.facts else None,
        }


@dataclass
class Cluster:
    """The outcome of a bring-up; holds SSH connections and tunnels until closed."""

    inventory: Inventory
    results: list[HostResult]

    @property
    def up(self) -> list[HostResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[HostResult]:
        return [r for r in self.results if not r.ok]

    @property
    def workers(self) -> list[WorkerRef]:
        """The workers that came up, in file order."""
        return [r.ref for r in self.up]

    @property
    def sessions(self) -> list[HostSession]:
        return [r.session for r in self.results if r.session is not None]

    def telemetry(self, interval: float = 3.0, local: bool = True) -> AsyncIterator[Any]:
        """Rounds of HostSample (coordinator first) over the open connections."""
        from quorum_tui.cluster.telemetry import watch

        return watch(self.sessions, interval, local)

    def require_all(self) -> None:
        if self.failed:
            raise QuorumError(
                "not every host came up: "
                + "; ".join(f"{r.host.name} is {r.state}: {r.reason}" for r in self.failed)
            )

    async def close(self) -> None:
        """Close tunnels and connections; the workers keep running."""
        tunnels = [r.tunnel for r in self.results if r.tunnel is not None]
        await _settle(max((r.tunnel_opened for r in self.results if r.tunnel), default=0.0))
        for r in self.results:
            r.tunnel = None
        closing = [*(t.aclose() for t in tunnels), *(s.close() for s in self.sessions)]
        for failure in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(failure, Exception):
                log.warning("closing a tunnel or connection: %s", failure, exc_info=failure)
        for r in self.results:
            r.session = None

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Pipeline:
    def __init__(
        self, inv: Inventory, host: HostConfig, options: BringUpOptions, local_port: int = 0
    ) -> None:
        self.inv = inv
        self.options = options
        self.local_port = local_port
        self.result = HostResult(host)

    def emit(self, state: HostState, reason: str) -> None:
        self.result.state = state
        self.result.reason = reason
        if self.options.on_event:
            self.options.on_event(HostEvent(self.result.host.name, state, reason))

    def line(self, text: str) -> None:
        if self.options.on_event:
            self.options.on_event(
                HostEvent(self.result.host.name, self.result.state, self.result.reason, text)
            )

    async def run(self, stage: str, prompt: HostKeyPrompt | None) -> HostResult:
        try:
            await self._connect(prompt)
            if stage == "up":
                await self._up()
            elif stage == "check":
                await self._check()
            else:
                await self._down()
        except HostFailure as exc:
            self.emit(exc.state, exc.reason)
        except Exception as exc:  # a host must never take the others down with it
            log.exception("bringing up %s", self.result.host.name)
            self.emit("worker-down", f"unexpected error: {type(exc).__name__}: {exc}")
        return self.result

    async def _connect(self, prompt: HostKeyPrompt | None) -> None:
        host = self.result.host
        where = f"{host.user + '@' if host.user else ''}{host.address}"
        self.emit("connecting", f"connecting to {where}")
        session = await connect(self.inv, host, prompt, self.options.connect_timeout)
        self.result.session = session
        self.emit("connected", f"SSH connection to {where} open")

    async def _probe(self) -> HostFacts | None:
        session = self.result.session
        assert session is not None
        try:
            self.result.facts = await probe_host(session, self.result.host.rpc_port)
        except HostFailure:
            if not self.result.host.rpc_server:
                raise
            return None
        self.emit("connected", self.result.facts.summary())
        return self.result.facts

    async def _check(self) -> None:
        facts = await self._probe()
        session = self.result.session
        assert session is not None
        status = await self._worker_status(facts)
        if status.status == "running":
            self.result.pid = status.pid
            self.emit("worker-up", f"worker running ({status.detail})")
        else:
            end = await launch.worker_end(session, self.result.host.rpc_port)
            last = f"; {end}" if end else ""
            self.emit("worker-down", f"no worker running (`quorum up` starts one){last}")

    async def _down(self) -> None:
        session = self.result.session
        assert session is not None
        stopped = await launch.stop_worker(session, self.result.host.rpc_port)
        self.emit(
            "worker-down",
            "worker stopped" if stopped else "no worker that Quorum started was running",
        )

    async def _runtime(self, facts: HostFacts | None) -> str | None:
        session = self.result.session
        host = self.result.host
        assert session is not None
        if host.rpc_server:
            check = await session.run(f"test -x {shlex.quote(host.rpc_server)}")
            if check.exit_status != 0:
                raise HostFailure(
                    "worker-down", f"rpc_server {host.rpc_server} is not an executable on the host"
                )
            return None
        assert facts is not None
        if runtime_current(facts):
            return facts.launcher
        self.emit("installing", f"installing the worker runtime in {facts.runtime_dir}")
        return await ensure_runtime(session, facts, self.line)

    async def _up(self) -> None:
        """Open the tunnel while one remote command probes the host and starts its worker."""
        session = self.result.session
        host = self.result.host
        assert session is not None
        tunnel: asyncio.Future[Tunnel] | None = None
        if host.transport == "tunnel":
            bind = "127.0.0.1"
            tunnel = asyncio.ensure_future(self._tunnel(session))
        else:
            bind = session.peer_ip
            self.result.endpoint = f"{bind}:{host.rpc_port}"
            self.result.warnings.append(DIRECT_WARNING.format(endpoint=self.result.endpoint))
        try:
            await self._launch(session, bind, tunnel)
        except BaseException as exc:
            if tunnel is not None:
                await self._discard(tunnel, wait=not isinstance(exc, asyncio.CancelledError))
            raise
        if tunnel is not None and self.result.tunnel is None:
            self.result.tunnel = await tunnel

    async def _tunnel(self, session: HostSession) -> Tunnel:
        port = self.result.host.rpc_port
        if self.inv.tunnel_client == "openssh":
            try:
                tunnel = await open_openssh_tunnel(self.inv, session, port, self.local_port)
                self.result.tunnel_opened = time.monotonic()
                return tunnel
            except HostFailure as exc:
                self.result.warnings.append(
                    f"{exc.reason}; using asyncssh's forward instead (slower)"
                )
        return await open_tunnel(session, port, self.local_port)

    async def _launch(
        self, session: HostSession, bind: str, tunnel: asyncio.Future[Tunnel] | None
    ) -> None:
        """Probe and start (one command), reuse a healthy worker, install first if needed;
        then check the worker answers HELLO."""
        host = self.result.host

        async def endpoint() -> str:
            if tunnel is not None and self.result.tunnel is None:
                self.result.tunnel = await tunnel
                self.result.endpoint = self.result.tunnel.endpoint
            assert self.result.endpoint is not None
            return self.result.endpoint

        started = await self._probe_and_start(session, bind)
        if started is not None and started.outcome == "running":
            answer = await probe_async(await endpoint(), 3.0)
            if answer.status in ("ok", "busy"):
                self.result.pid = started.pid
                self.result.reused = True
                self.emit("worker-up", self._up_reason("reused the running worker"))
                return
            await launch.stop_worker(session, host.rpc_port)
            started = None
        if started is None:
            launcher = await self._runtime(self.result.facts)
            started = await launch.start_worker(session, bind, launcher)
        self.result.pid = started.pid
        if started.outcome == "exited":
            raise HostFailure("worker-down", _exited(started.log, started.tail))
        await endpoint()
        await self._wait_healthy()
        what = "reused the running worker" if started.outcome == "running" else "started the worker"
        self.result.reused = started.outcome == "running"
        self.emit("worker-up", self._up_reason(what))

    async def _probe_and_start(self, session: HostSession, bind: str) -> launch.Started | None:
        try:
            archive = await asyncio.to_thread(llama_archive)
            answer = await launch.probe_and_start(session, bind, app_tarball()[1], archive.id)
        except HostFailure:
            if not self.result.host.rpc_server:
                raise
            return None
        self.result.facts = answer.facts
        self.emit("connected", answer.facts.summary())
        return answer.started

    async def _discard(self, tunnel: asyncio.Future[Tunnel], wait: bool) -> None:
        """Close this host's tunnel after a failure. One still opening is awaited first
        (cancelling it could leave its `ssh` child behind) unless `wait` is false."""
        self.result.tunnel = None
        if not tunnel.done():
            if not wait:
                tunnel.cancel()
            try:
                await tunnel
            except asyncio.CancelledError:
                if not tunnel.cancelled():
                    raise
            except Exception:
                log.info(
                    "the tunnel of %s failed as it opened", self.result.host.name, exc_info=True
                )
        if not tunnel.cancelled() and tunnel.exception() is None:
            if wait:
                await _settle(self.result.tunnel_opened)
            await tunnel.result().aclose()

    async def _worker_status(self, facts: HostFacts | None) -> launch.RemoteWorker:
        if facts is None:
            assert self.result.session is not None
            return await launch.worker_status(self.result.session, self.result.host.rpc_port)
        if facts.worker_pid:
            return launch.RemoteWorker("running", facts.worker_pid, f"pid {facts.worker_pid}")
        return launch.RemoteWorker("stopped", None, "no worker process")

    def _up_reason(self, what: str) -> str:
        tunnel = self.result.tunnel
        via = f"through an SSH tunnel ({tunnel.client})" if tunnel else "directly (unauthenticated)"
        return f"{what} (pid {self.result.pid}), protocol {PROTOCOL_TEXT}, {via} at " + str(
            self.result.endpoint
        )

    async def _wait_healthy(self) -> None:
        session = self.result.session
        host = self.result.host
        assert session is not None and self.result.endpoint is not None
        deadline = time.monotonic() + self.options.worker_timeout
        last = ""
        next_check = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            answer = await probe_async(self.result.endpoint, 2.0)
            if answer.ok:
                return
            last = answer.reason
            if time.monotonic() < next_check:
                await asyncio.sleep(HELLO_RETRY)
                continue
            next_check = time.monotonic() + 2.0
            status = await launch.worker_status(session, host.rpc_port)
            if status.status != "running":
                tail = await launch.log_tail(session, host.rpc_port)
                log, lines = (tail[0], tail[1:]) if tail else ("the worker log", [])
                raise HostFailure("worker-down", _exited(log, lines))
            await asyncio.sleep(HELLO_RETRY)
        raise HostFailure(
            "worker-down",
            f"the worker did not answer HELLO within {self.options.worker_timeout:g}s ({last})",
        )


async def _settle(opened: float) -> None:
    """Wait until a tunnel opened at `opened` (monotonic; 0 for none) may be closed."""
    if opened:
        await asyncio.sleep(max(0.0, opened + TUNNEL_SETTLE - time.monotonic()))


def _exited(log: str, lines: list[str]) -> str:
    """A worker that ended during its start, in words: its exit status (which the runtime's
    worker command writes to the log) and the log's last lines."""
    code = launch.exit_status(lines)
    shown = "\n".join(f"    {line}" for line in lines if not line.startswith(launch.EXIT_MARK))
    if code is not None:
        how = describe_exit("the worker", code)
        return f"{how}, at its start; the last lines of {log or 'its log'}:\n{shown}"
    return f"the worker exited at start; the last lines of {log or 'its log'}:\n{shown}"


def _prompt(options: BringUpOptions) -> HostKeyPrompt | None:
    if options.accept_new_host_keys:

        async def accept(question: HostKeyQuestion) -> bool:
            return True

        return accept
    if options.prompt is None:
        return None
    lock = asyncio.Lock()
    ask = options.prompt

    async def one_at_a_time(question: HostKeyQuestion) -> bool:
        async with lock:
            return await ask(question)

    return one_at_a_time


async def _run_all(
    inv: Inventory, stage: str, options: BringUpOptions | None, names: Sequence[str] | None
) -> Cluster:
    options = options or BringUpOptions()
    hosts = [inv.host(n) for n in names] if names else list(inv.hosts)
    if not hosts:
        raise QuorumError(f"{inv.path}: no hosts; add one with `quorum hosts add NAME ADDRESS`")
    prompt = _prompt(options)
    pipelines = [_Pipeline(inv, h, options) for h in hosts]
    tasks = [asyncio.ensure_future(p.run(stage, prompt)) for p in pipelines]
    try:
        results = list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        cluster = Cluster(inv, [p.result for p in pipelines])
        with logged(log, "closing the connections of an interrupted bring-up"):
            await asyncio.shield(cluster.close())
        raise
    return Cluster(inv, results)


async def bring_up(
    inv: Inventory, options: BringUpOptions | None = None, names: Sequence[str] | None = None
) -> Cluster:
    """Workers up on every host (reused when healthy); the Cluster holds the tunnels."""
    return await _run_all(inv, "up", options, names)


async def trouble(result: HostResult) -> str | None:
    """Why host `result` needs bringing back (its worker died, its tunnel or connection
    dropped), or None while it is fine. One remote command."""
    if not result.ok or result.session is None:
        return None
    try:
        status = await launch.worker_status(result.session, result.host.rpc_port)
        process = result.tunnel.process if result.tunnel else None
        if process is not None and process.returncode is not None:
            return "the ssh tunnel exited; reopening it"
        if status.status == "running":
            return None
        end = await launch.worker_end(result.session, result.host.rpc_port)
        return f"{end or 'the worker process is gone'}; restarting it"
    except HostFailure as exc:
        return f"{exc.reason}; reconnecting"


async def bring_back(
    cluster: Cluster,
    index: int,
    options: BringUpOptions,
    reason: str,
    prompt: HostKeyPrompt | None = None,
) -> HostResult:
    """Bring host `index` of `cluster` up again (a new connection, its worker restarted when
    gone), keeping its tunnel's local port, so the workers' endpoints stay the same."""
    r = cluster.results[index]
    local_port = r.tunnel.local_port if r.tunnel else 0
    if r.tunnel is not None:
        await r.tunnel.aclose()
    if r.session is not None:
        await r.session.close()
    pipeline = _Pipeline(cluster.inventory, r.host, options, local_port)
    pipeline.emit("worker-down", reason)
    cluster.results[index] = await pipeline.run("up", prompt or _prompt(options))
    return cluster.results[index]


async def check(
    inv: Inventory, options: BringUpOptions | None = None, names: Sequence[str] | None = None
) -> Cluster:
    """Connect and probe every host and report its worker; starts and installs nothing."""
    return await _run_all(inv, "check", options, names)


async def down(
    inv: Inventory, options: BringUpOptions | None = None, names: Sequence[str] | None = None
) -> Cluster:
    """Stop the workers Quorum started on every host; touches nothing else."""
    cluster = await _run_all(inv, "down", options, names)
    await cluster.close()
    return cluster
