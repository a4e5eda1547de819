"""The workers a deployment uses, and the one owner of those it started.

Three kinds: endpoints the user gave (watched by the deployment, never started or stopped
here), workers started on this machine, and SSH hosts brought up from the cluster file. The
pool watches the ones it started and restarts a dead one on the same endpoint, with one
back-off for all (1 s, doubling to 30 s): `quorum serve`, `run`, `up`, the demo and the app all
get the same care. It reports typed `WorkerEvent`s (and the bring-up's `HostEvent`s).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from quorum_tui import paths
from quorum_tui.cluster import bringup
from quorum_tui.cluster.bringup import BringUpOptions, Cluster, HostResult
from quorum_tui.cluster.events import HostEvent
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.engine.localcluster import LocalCluster, LocalWorker
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.errors import QuorumError

log = logging.getLogger(__name__)

LOCAL_EVERY = 1.0
"""Seconds between looks at the workers started on this machine (a process poll each)."""
SSH_EVERY = 5.0
"""Seconds between looks at SSH hosts (one remote command each)."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

WorkerState = Literal["up", "down", "restarting", "restart-failed"]


@dataclass(frozen=True)
class WorkerEvent:
    """A worker the pool started changed state; `reason` says why."""

    worker: WorkerRef
    state: WorkerState
    reason: str


Sink = Callable[[WorkerEvent | HostEvent], None]


@dataclass
class _Kept:
    """A worker the pool started, and when it may next be restarted."""

    ref: WorkerRef
    local: LocalWorker | None = None
    cluster: Cluster | None = None
    failures: int = 0
    next_try: float = 0.0
    down: str | None = None
    """Why it is down, while it is."""

    @property
    def host(self) -> HostResult | None:
        if self.cluster is None:
            return None
        return next(r for r in self.cluster.results if r.host.name == self.ref.name)


@dataclass
class WorkerPool:
    on_event: Sink | None = None
    given: list[WorkerRef] = field(default_factory=list)
    kept: list[_Kept] = field(default_factory=list)
    local: LocalCluster | None = None
    clusters: list[Cluster] = field(default_factory=list)
    ssh_every: float = SSH_EVERY
    """Seconds between looks at each SSH host."""
    _watch: asyncio.Task[None] | None = None
    _looked: float = 0.0

    def emit(self, event: WorkerEvent | HostEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # ----- what the pool has

    @property
    def refs(self) -> list[WorkerRef]:
        """Every worker, given ones first, then those started, in the order they came."""
        return [*self.given, *(k.ref for k in self.kept)]

    def runs_here(self, worker: WorkerRef) -> bool:
        """Whether `worker` computes on this machine's cores (a local worker, or a given
        loopback endpoint; the loopback end of an SSH tunnel is another host's)."""
        if any(k.ref == worker for k in self.kept):
            return any(k.ref == worker and k.local is not None for k in self.kept)
        return _is_loopback(worker.endpoint)

    def pid(self, worker: WorkerRef) -> int | None:
        """The local process of a worker started here, or its remote pid for an SSH host."""
        for kept in self.kept:
            if kept.ref == worker:
                if kept.local is not None:
                    return kept.local.process.pid
                host = kept.host
                return host.pid if host is not None else None
        return None

    def host_of(self, worker: WorkerRef) -> HostResult | None:
        """The SSH host `worker` runs on, while the pool looks after it."""
        for kept in self.kept:
            if kept.ref == worker:
                return kept.host
        return None

    def is_local(self, worker: WorkerRef) -> bool:
        return any(k.ref == worker and k.local is not None for k in self.kept)

    def host_results(self) -> list[HostResult]:
        return [r for c in self.clusters for r in c.results]

    async def death(self, worker: WorkerRef) -> str | None:
        """How a worker started here ended, when its process is gone."""
        for kept in self.kept:
            if kept.ref == worker and kept.local is not None and not kept.local.alive():
                return kept.local.death(tail_lines=0)
        return None

    # ----- bringing workers in

    def add_given(self, workers: Sequence[WorkerRef]) -> None:
        self.given += [w for w in workers if w not in self.given]

    async def add_local(self, count: int, threads: int = 0) -> list[WorkerRef]:
        """`count` workers on this machine, on free loopback ports."""
        if self.local is None:
            self.local = LocalCluster(paths.ensure(paths.data_dir() / "local-workers"))
        cluster = self.local
        start = len(cluster.workers)
        names = [f"w{len(self.refs) + i + 1}" for i in range(count)]

        def start_them() -> list[LocalWorker]:
            for name in names:
                cluster.add(name, threads=threads, wait=False)
            started = cluster.workers[start:]
            for worker in started:
                from quorum_tui.engine.localcluster import wait_ready

                wait_ready(worker)
            return started

        try:
            started = await asyncio.to_thread(start_them)
        except BaseException:
            await asyncio.to_thread(self._stop_local, cluster.workers[start:])
            raise
        for worker in started:
            self.kept.append(_Kept(worker.ref, local=worker))
            self.emit(WorkerEvent(worker.ref, "up", f"started on {worker.endpoint}"))
        self._ensure_watch()
        return [w.ref for w in started]

    async def add_hosts(
        self, inventory: Inventory, options: BringUpOptions, names: Sequence[str] | None = None
    ) -> Cluster:
        """Bring the cluster file's hosts up (all, or `names`); keep those that came up."""
        if options.on_event is None and self.on_event is not None:
            options = replace(options, on_event=self.emit)
        cluster = await bringup.bring_up(inventory, options, names)
        self.clusters.append(cluster)
        for result in cluster.up:
            self.kept = [k for k in self.kept if k.ref.name != result.host.name]
            self.kept.append(_Kept(result.ref, cluster=cluster))
        self._ensure_watch()
        return cluster

    async def release(self, names: Sequence[str]) -> None:
        """Stop looking after the named workers: local ones are stopped, SSH hosts' tunnels
        and connections closed (their workers keep running)."""
        gone = [k for k in self.kept if k.ref.name in names]
        self.kept = [k for k in self.kept if k not in gone]
        self.given = [w for w in self.given if w.name not in names]
        await asyncio.to_thread(self._stop_local, [k.local for k in gone if k.local])
        for kept in gone:
            host = kept.host
            if host is not None:
                if host.tunnel is not None:
                    await host.tunnel.aclose()
                    host.tunnel = None
                if host.session is not None:
                    await host.session.close()
                    host.session = None

    def _stop_local(self, workers: Sequence[LocalWorker | None]) -> None:
        for worker in workers:
            if worker is None:
                continue
            worker.kill()
            if self.local is not None and worker in self.local.workers:
                self.local.workers.remove(worker)

    # ----- looking after them

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._look_after(), name="worker pool")

    def look_now(self) -> None:
        """Look at every started worker at the next chance (a failover just happened)."""
        self._looked = 0.0
        for kept in self.kept:
            kept.next_try = min(kept.next_try, time.monotonic())

    async def _look_after(self) -> None:
        last_ssh = 0.0
        while True:
            now = time.monotonic()
            ssh_due = now - last_ssh >= self.ssh_every or self._looked == 0.0
            if ssh_due:
                last_ssh = now
            self._looked = now
            for kept in list(self.kept):
                try:
                    if kept.local is not None:
                        await self._look_local(kept)
                    elif ssh_due:
                        await self._look_ssh(kept)
                except QuorumError as exc:
                    log.warning("looking after %s: %s", kept.ref.name, exc)
                except Exception:
                    log.exception("looking after %s", kept.ref.name)
            await asyncio.sleep(LOCAL_EVERY)

    async def _look_local(self, kept: _Kept) -> None:
        worker = kept.local
        assert worker is not None and self.local is not None
        if worker.alive():
            return
        if kept.down is None:
            kept.down = worker.death(tail_lines=0)
            kept.next_try = time.monotonic() + self._backoff(kept)
            self.emit(WorkerEvent(kept.ref, "down", kept.down))
        if time.monotonic() < kept.next_try:
            return
        self.emit(WorkerEvent(kept.ref, "restarting", f"{kept.down}; restarting it"))
        try:
            again = await asyncio.to_thread(self.local.restart, worker)
        except QuorumError as exc:
            self._failed(kept, str(exc))
            return
        kept.local, kept.failures, kept.down = again, 0, None
        self.emit(WorkerEvent(kept.ref, "up", f"restarted on {again.endpoint}"))

    async def _look_ssh(self, kept: _Kept) -> None:
        host, cluster = kept.host, kept.cluster
        if host is None or cluster is None:
            return
        reason = await bringup.trouble(host) if host.ok else host.reason or "not up"
        if reason is None:
            return
        if kept.down is None:
            kept.down = reason
            kept.next_try = time.monotonic()
            self.emit(WorkerEvent(kept.ref, "down", reason))
        if time.monotonic() < kept.next_try:
            return
        self.emit(WorkerEvent(kept.ref, "restarting", reason))
        index = cluster.results.index(host)
        options = BringUpOptions(on_event=self.emit)
        again = await bringup.bring_back(cluster, index, options, reason)
        if again.ok:
            kept.failures, kept.down = 0, None
            self.emit(WorkerEvent(kept.ref, "up", again.reason))
        else:
            self._failed(kept, again.reason)

    def _failed(self, kept: _Kept, why: str) -> None:
        kept.failures += 1
        delay = self._backoff(kept)
        kept.next_try = time.monotonic() + delay
        self.emit(WorkerEvent(kept.ref, "restart-failed", f"{why}; trying again in {delay:g} s"))

    @staticmethod
    def _backoff(kept: _Kept) -> float:
        return (
            min(BACKOFF_FIRST * 2 ** max(kept.failures - 1, 0), BACKOFF_MAX)
            if kept.failures
            else 0.0
        )

    async def close(self) -> None:
        """Stop looking after workers; stop the local ones, close SSH tunnels and connections
        (SSH workers keep running: `quorum down` stops them)."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait({self._watch})
            self._watch = None
        if self.local is not None:
            await asyncio.to_thread(self.local.stop)
        for cluster in self.clusters:
            await cluster.close()
        self.kept.clear()
        self.clusters.clear()


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
