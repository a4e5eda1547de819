"""Where each worker's weights come from: its host's own copy, not the coordinator's push.

Before a load, each SSH host's tensor cache is filled for the layers the plan gives it from
the host's own copy of the model (its `models_dir`), else from the model's source URL with
range requests, where it has those; llama-server then sends hashes for those tensors instead
of their bytes, and pushes whatever is still missing (llama.cpp caches that too). While the
plan serves, each host also stages, in the background, the layers a failover would move to it
(under the survivor rule), from the same sources or else streamed from the coordinator over
its SSH connection, as far as its cache allows: a failover then loads without a push. Workers
on this machine and plain `rpc-server` hosts are left as they are (nothing crosses a link, or
Quorum does not know their cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from quorum_tui.cluster.caches import HostCache, Source
from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.inventory import HostConfig
from quorum_tui.deploy.failover import survivor_plan
from quorum_tui.deploy.pool import WorkerPool
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.weights import CachedTensor, WeightsManifest, known_manifest, manifest
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged
from quorum_tui.models.cache import source_url
from quorum_tui.units import human_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsPlaced:
    """A worker's tensor cache was brought up to date: for its own layers before a load
    (`purpose` "load") or for those a failover would move to it ("staging")."""

    worker: WorkerRef
    purpose: str
    source: str
    """Where the written bytes came from ("" when nothing had to be written)."""
    written: int
    cached: int
    """Bytes of the wanted tensors now in the cache."""
    total: int
    """Bytes of the wanted tensors (those over llama.cpp's hash threshold)."""
    seconds: float
    notes: tuple[str, ...] = ()
    """Why a source could not be used."""

    def describe(self) -> str:
        what = "its layers" if self.purpose == "load" else "the layers a failover would move to it"
        line = (
            f"{self.worker.name}: {human_bytes(self.cached)} of {human_bytes(self.total)} of "
            f"{what} in its tensor cache"
        )
        if self.written:
            line += (
                f" ({human_bytes(self.written)} written from {self.source} in {self.seconds:.1f}s)"
            )
        if self.cached < self.total and self.purpose == "load":
            line += "; the coordinator pushes the rest"
        return "; ".join([line, *self.notes])


Sink = Callable[[WeightsPlaced], None]


@dataclass(frozen=True)
class CacheCoverage:
    """Bytes of each layer (then of the output layer) that llama.cpp offers by hash
    (`totals`), and how many of them each worker's tensor cache holds, by endpoint."""

    totals: tuple[int, ...]
    held: dict[str, tuple[int, ...]]

    def share(self, plan: LayerPlan, stage: int) -> float | None:
        """The fraction of `stage`'s cacheable bytes its worker's cache holds (None: unknown,
        or nothing on that stage is cacheable)."""
        endpoint = plan.stages[stage].endpoint or ""
        have = self.held.get(endpoint)
        if stage == 0 or have is None:
            return None
        picked = [*plan.stages[stage].layers]
        if plan.output_stage == stage:
            picked.append(len(self.totals) - 1)
        total = sum(self.totals[i] for i in picked)
        return sum(have[i] for i in picked) / total if total else None


@dataclass(frozen=True)
class _Host:
    ref: WorkerRef
    config: HostConfig
    cache: HostCache

    @property
    def limit(self) -> int:
        return int((self.config.cache_gib or 0) * (1 << 30))


class WeightsKeeper:
    """Fills the hosts' tensor caches for a deployment (see the module's docstring)."""

    def __init__(self, pool: WorkerPool, emit: Sink) -> None:
        self.pool = pool
        self.emit = emit
        self._staging: asyncio.Task[None] | None = None
        self.staged = asyncio.Event()
        """Set when the last staging finished, found nothing to do or was stopped."""

    def hosts(self, workers: Sequence[WorkerRef]) -> list[_Host]:
        """The workers whose caches Quorum manages: Quorum's own workers on SSH hosts."""
        found = []
        for ref in workers:
            host = self.pool.host_of(ref)
            if host is None or host.session is None or host.host.rpc_server:
                continue
            found.append(_Host(ref, host.host, HostCache(ref.name, host.session)))
        return found

    async def before_load(self, path: Path, plan: LayerPlan) -> None:
        """Fill each host's cache for its stage of `plan` from the host's own sources; a host
        without any loses the cut-short files of its stage (llama.cpp pushes them again)."""
        await self.stop_staging()
        hosts = [(h, self._home_sources(h, path)) for h in self.hosts(plan.workers)]
        if not hosts:
            return
        with_sources = any(sources for _, sources in hosts)
        weights = await asyncio.to_thread(manifest if with_sources else known_manifest, path)
        if weights is None:
            return
        jobs = []
        for host, sources in hosts:
            tensors = weights.for_stage(plan, plan.workers.index(host.ref) + 1)
            if tensors:
                chosen = sources or [Source("none")]
                jobs.append(self._fill(host, weights, tensors, chosen, "load", path))
        await asyncio.gather(*jobs)

    def stage(
        self,
        path: Path,
        info: ModelInfo,
        plan: LayerPlan,
        free: Sequence[int | None],
        settings: EngineSettings,
        draft: ModelInfo | None,
    ) -> None:
        """Start staging, in the background, the layers each host would take over."""
        self.staged.clear()
        work = self._stage(path, info, plan, list(free), settings, draft)
        self._staging = asyncio.create_task(work, name="weights staging")

    async def stop_staging(self) -> None:
        task, self._staging = self._staging, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.staged.set()

    async def _stage(
        self,
        path: Path,
        info: ModelInfo,
        plan: LayerPlan,
        free: list[int | None],
        settings: EngineSettings,
        draft: ModelInfo | None,
    ) -> None:
        try:
            hosts = self.hosts(plan.workers)
            if not hosts:
                return
            with logged(log, "staging the layers a failover would move"):
                weights = await asyncio.to_thread(manifest, path)
                wanted = staging_sets(weights, info, plan, free, settings, draft)
                sources = {h.ref: [*self._home_sources(h, path), Source("stream")] for h in hosts}
                await asyncio.gather(
                    *(
                        self._fill(h, weights, wanted[h.ref], sources[h.ref], "staging", path)
                        for h in hosts
                        if wanted.get(h.ref)
                    )
                )
        finally:
            self.staged.set()

    def _home_sources(self, host: _Host, path: Path) -> list[Source]:
        sources = []
        if host.config.models_dir:
            sources.append(Source("dir", host.config.models_dir))
        found = source_url(path)
        if found is not None:
            url, headers = found
            sources.append(Source("url", url, tuple(headers.items())))
        return sources

    async def _fill(
        self,
        host: _Host,
        weights: WeightsManifest,
        tensors: Sequence[CachedTensor],
        sources: Sequence[Source],
        purpose: str,
        path: Path,
    ) -> None:
        """Try `sources` in order until the host's cache holds `tensors`; say what happened.
        A failure is a note, never an error: llama.cpp pushes what the cache lacks."""
        started = time.monotonic()
        total = sum(t.size for t in tensors)
        notes: list[str] = []
        written, used, cached = 0, "", total
        for source in sources:
            try:
                result = await host.cache.fill(
                    weights, tensors, source, host.limit, read_here=path.parent
                )
            except (QuorumError, HostFailure) as exc:
                notes.append(
                    str(exc) if isinstance(exc, QuorumError) else f"{host.ref.name}: {exc}"
                )
                continue
            written, used = result.bytes, result.source if result.written else ""
            cached = result.present_bytes + result.bytes
            break
        else:
            cached = 0
            with logged(log, f"asking {host.ref.name} what its cache lacks"):
                cached = total - sum(t.size for t in await host.cache.missing(weights, tensors))
        for note in notes:
            log.info("%s's tensor cache: %s", host.ref.name, note)
        seconds = time.monotonic() - started
        event = WeightsPlaced(host.ref, purpose, used, written, cached, total, seconds)
        self.emit(replace(event, notes=tuple(notes)))

    async def cached_layers(
        self, path: Path, info: ModelInfo, workers: Sequence[WorkerRef]
    ) -> CacheCoverage:
        """How much of each layer each managed worker's tensor cache holds; a worker that
        cannot say is left out."""
        hosts = self.hosts(workers)
        if not hosts:
            return CacheCoverage((), {})
        weights = await asyncio.to_thread(manifest, path)
        groups = [
            weights.for_layers([] if i == info.n_layers else [i], i == info.n_layers)
            for i in range(info.n_layers + 1)
        ]
        totals = tuple(sum(t.size for t in group) for group in groups)
        held: dict[str, tuple[int, ...]] = {}
        for host in hosts:
            with logged(log, f"asking {host.ref.name} what its cache holds"):
                lacking = {t.fnv for t in await host.cache.missing(weights, weights.tensors)}
                held[host.ref.endpoint] = tuple(
                    sum(t.size for t in group if t.fnv not in lacking) for group in groups
                )
        return CacheCoverage(totals, held)


def staging_sets(
    weights: WeightsManifest,
    info: ModelInfo,
    plan: LayerPlan,
    free: Sequence[int | None],
    settings: EngineSettings,
    draft: ModelInfo | None,
) -> dict[WorkerRef, tuple[CachedTensor, ...]]:
    """For each worker, the tensors it lacks that it would hold after any one other worker's
    death (the survivor plan for `free`: the coordinator's room first, then each worker's)."""
    wanted: dict[WorkerRef, dict[str, CachedTensor]] = {w: {} for w in plan.workers}
    for dead in plan.workers:
        keep = [i for i, w in enumerate(plan.workers) if w != dead]
        room = [free[0], *(free[i + 1] for i in keep)]
        try:
            after = survivor_plan(info, plan, [dead], room, settings, draft)
        except QuorumError:
            continue
        for index, worker in enumerate(after.workers):
            had = {t.fnv for t in weights.for_stage(plan, plan.workers.index(worker) + 1)}
            for tensor in weights.for_stage(after, index + 1):
                if tensor.fnv not in had:
                    wanted[worker][tensor.fnv] = tensor
    return {w: tuple(ts.values()) for w, ts in wanted.items()}
