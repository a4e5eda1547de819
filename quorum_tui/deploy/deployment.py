"""One deployment: workers + model + plan -> a coordinator serving at Quorum's own endpoint.

Every entry point goes through here: `quorum run`, `serve`, `bench`, the demo and the app's
Apply, Stop and Chat. The flow is written once: bring the workers up (given endpoints, the
cluster file's hosts over SSH, or local demo workers), resolve the model, plan, check the
workers, start llama-server with the settings of engine.settings, and follow it. The
gateway's address stays the same across coordinator restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from quorum_tui import paths
from quorum_tui.cluster.bringup import BringUpOptions, Cluster, bring_up
from quorum_tui.cluster.inventory import load_inventory, resolve_path
from quorum_tui.deploy.events import (
    DeployEvent,
    EventSink,
    FailedOver,
    FailingOver,
    ModelReady,
    Planned,
    Serving,
    Stopped,
    WorkerBack,
    WorkersReady,
)
from quorum_tui.deploy.failover import survivor_plan
from quorum_tui.deploy.gateway import Gateway
from quorum_tui.deploy.plans import PlanRequest, make_plan
from quorum_tui.engine.completion import Completed, CompletionRequest, Piece, stream_completion
from quorum_tui.engine.cpucheck import CpuVerdict
from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.llama_server import ServerOptions, server_binary
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import Explanation
from quorum_tui.engine.probe import probe_all
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.speculation import Speculation, check_draft
from quorum_tui.engine.supervisor import CoordinatorProcess, Loaded, Ready, preflight
from quorum_tui.errors import QuorumError
from quorum_tui.wire import PlanBody, StageBody

REJOIN_AFTER = 30.0
"""Seconds a worker lost to a failover must answer again before it is used again."""
REJOIN_POLL = 2.0
REASON_WAIT = 20.0
"""Seconds a broken generation waits for the coordinator's exit, to say which worker died."""


@dataclass(frozen=True)
class Target:
    """Where the workers come from: endpoints, the cluster file's hosts, or local workers."""

    workers: tuple[WorkerRef, ...] = ()
    cluster_file: Path | None = None
    local_workers: int = 0
    bring_up: BringUpOptions | None = None
    all_hosts: bool = True
    """Whether every host of the cluster file must come up (`quorum up` takes what does)."""

    @classmethod
    def endpoints(cls, endpoints: Sequence[str]) -> Target:
        """`--worker HOST:PORT ...`, named w1, w2, ... in order."""
        refs = []
        for index, endpoint in enumerate(endpoints, start=1):
            parse_endpoint(endpoint)
            refs.append(WorkerRef(f"w{index}", endpoint))
        return cls(workers=tuple(refs))


@dataclass(frozen=True)
class Prepared:
    """A resolved model and the plan to load."""

    path: Path
    info: ModelInfo
    plan: LayerPlan
    explanation: Explanation | None = None
    draft: ModelInfo | None = None
    """The draft model of draft speculation, checked against the target's vocabulary."""


@dataclass
class Access:
    """How clients reach the deployment (Quorum's endpoint, not llama-server's)."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None


@dataclass
class RunResult:
    """One generation: what was planned, what llama.cpp loaded, and how fast it went."""

    plan: LayerPlan
    realized: tuple[int, ...]
    load_s: float
    done: Completed
    cpu: CpuVerdict | None
    """The coordinator's CPU kernels (None: a llama-server of the user's)."""
    explanation: Explanation | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--report` JSON, with each stage's layers read from the realized assignment."""
        *layers, output = self.realized
        stages = []
        for index, stage in enumerate(self.plan.stages):
            mine = [il for il, s in enumerate(layers) if s == index]
            stages.append(
                {
                    "name": stage.name,
                    "endpoint": stage.endpoint,
                    "layers": [mine[0], mine[-1]] if mine else None,
                }
            )
        report: dict[str, Any] = {
            "stages": stages,
            "output_stage": output,
            "prompt_tokens": self.done.prompt_tokens,
            "completion_tokens": self.done.completion_tokens,
            "tokens_per_s": self.done.tokens_per_s,
            "ttft_s": self.done.ttft_s,
            "load_s": self.load_s,
            "stop_type": self.done.stop_type,
            "failovers": [f.to_json() for f in self.done.failovers],
            "cpu_kernels": self.cpu.summary() if self.cpu else None,
            "cpu_variant": self.cpu.variant if self.cpu else None,
        }
        if self.explanation is not None:
            report["planner"] = self.explanation.to_json()
        return report


def local_free() -> int:
    """This machine's available memory: the coordinator's room."""
    return int(psutil.virtual_memory().available)


def is_loopback(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_body(
    model: Path, plan: LayerPlan, realized: Sequence[int], load_s: float, away: Sequence[str]
) -> PlanBody:
    """What GET /quorum/plan returns: the stages and the assignment llama.cpp realized."""
    return PlanBody(
        model=str(model),
        summary=plan.summary(),
        stages=tuple(
            StageBody(s.name, s.endpoint, (s.first, s.last) if s.last is not None else None)
            for s in plan.stages
        ),
        output_stage=plan.output_stage,
        planned=tuple(plan.assignment()),
        realized=tuple(realized),
        load_s=load_s,
        away=tuple(away),
    )


@dataclass
class _Running:
    process: CoordinatorProcess
    prepared: Prepared
    realized: tuple[int, ...] = ()
    load_s: float = 0.0
    follower: asyncio.Task[str | None] | None = None
    stopping: bool = False


class Deployment:
    """Workers, model and plan to a coordinator behind a stable endpoint; `close` ends all.

    Events go to `on_event` as they happen. Workers that this deployment started (local
    workers) stop with it; SSH workers keep running and only their tunnels close.
    """

    def __init__(
        self,
        target: Target | None = None,
        settings: EngineSettings | None = None,
        access: Access | None = None,
        on_event: EventSink | None = None,
        failover: bool = True,
        rejoin_after: float | None = REJOIN_AFTER,
    ) -> None:
        self.target = target or Target()
        self.failover = failover
        """Whether a worker's death re-plans on the survivors and resumes the replies."""
        self.rejoin_after = rejoin_after
        """Seconds a dead worker must answer again before the home plan is restored by
        itself (None: only when `rejoin` is called)."""
        self.settings = settings or EngineSettings()
        self.access = access or Access()
        self.on_event = on_event
        self.workers: list[WorkerRef] = list(self.target.workers)
        self.local_workers = sum(1 for w in self.workers if is_loopback(w.endpoint))
        self.cluster: Cluster | None = None
        self.local: LocalCluster | None = None
        self.gateway: Gateway | None = None
        self._running: _Running | None = None
        self.last_stop: str | None = None
        """Why the last coordinator stopped (None: it was asked to, or none has run)."""
        self.home: Prepared | None = None
        """The plan served before failovers, restored when the dead workers are back."""
        self.away: list[WorkerRef] = []
        """Workers lost to failovers, not yet back in the plan."""
        self._recovery: asyncio.Task[bool] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._switching = False

    def emit(self, event: DeployEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    @property
    def threads(self) -> int:
        """The coordinator's threads, decided once by the settings for these workers."""
        return self.settings.coordinator_threads(self.local_workers)

    @property
    def url(self) -> str | None:
        """Quorum's endpoint while a coordinator serves behind it."""
        gateway = self.gateway
        return gateway.url if gateway is not None and gateway.upstream else None

    # ----- workers, model, plan

    def use_workers(self, workers: Sequence[WorkerRef], local: int) -> None:
        """Plan over `workers` from now on, `local` of them running on this machine."""
        self.workers = list(workers)
        self.local_workers = local

    async def connect_workers(self) -> list[WorkerRef]:
        """Bring the target's workers up: SSH hosts with their tunnels, or local workers."""
        warnings: list[str] = []
        if self.target.cluster_file is not None and self.cluster is None:
            if self.target.workers:
                raise QuorumError("use either --cluster or --worker, not both")
            inventory = load_inventory(resolve_path(self.target.cluster_file))
            options = self.target.bring_up or BringUpOptions()
            if options.on_event is None:
                options = replace(options, on_event=self.emit)
            self.cluster = await bring_up(inventory, options)
            if self.target.all_hosts:
                self.cluster.require_all()
            self.workers = self.cluster.workers
            self.local_workers = 0
            warnings = [f"{r.host.name}: {w}" for r in self.cluster.results for w in r.warnings]
        elif self.target.local_workers and self.local is None:
            self.local = await start_local_workers(self.target.local_workers)
            self.workers = self.local.refs
            self.local_workers = len(self.workers)
        self.emit(WorkersReady(tuple(self.workers), tuple(warnings)))
        return self.workers

    async def resolve(self, spec: str) -> tuple[Path, ModelInfo]:
        """The model's local file (pulled on first use, with progress events) and its facts."""
        from quorum_tui.models.resolve import resolve_model

        loop = asyncio.get_running_loop()

        def progress(event: Any) -> None:
            loop.call_soon_threadsafe(self.emit, event)

        path = await asyncio.to_thread(resolve_model, spec, progress if self.on_event else None)
        info = await asyncio.to_thread(inspect_model, path)
        self.emit(ModelReady(path, info))
        return path, info

    async def prepare(self, spec: str, request: PlanRequest | None = None) -> Prepared:
        """Workers up, model resolved, plan made: everything but starting the coordinator."""
        await self.connect_workers()
        path, info = await self.resolve(spec)
        draft = await self.resolve_draft(info)
        plan, explanation = await self.plan(info, request or PlanRequest(), draft)
        return Prepared(path, info, plan, explanation, draft)

    async def resolve_draft(self, target: ModelInfo) -> ModelInfo | None:
        """The settings' draft model, resolved and checked against `target` (None: no draft)."""
        if self.settings.spec != "draft" or not self.settings.draft:
            return None
        from quorum_tui.models.resolve import resolve_model

        path = await asyncio.to_thread(resolve_model, self.settings.draft)
        draft = await asyncio.to_thread(inspect_model, path)
        check_draft(target, draft)
        return draft

    async def plan(
        self, info: ModelInfo, request: PlanRequest, draft: ModelInfo | None = None
    ) -> tuple[LayerPlan, Explanation | None]:
        """The plan `request` asks for over the current workers (the planner measures them
        with the threads the coordinator will use)."""
        plan, explanation = await make_plan(
            info, self.workers, request, self.settings, self.threads, draft
        )
        self.emit(Planned(plan, explanation))
        return plan, explanation

    # ----- the coordinator

    async def start(self, prepared: Prepared, recovering: bool = False) -> str:
        """Load `prepared` in a new coordinator (stopping the old one) and serve it.

        Returns Quorum's endpoint; raises QuorumError with the reason when the coordinator
        does not come up (a worker that fails its check, a plan llama.cpp did not realize).
        While `recovering`, replies interrupted by the old one wait for this one.
        """
        await self.stop_coordinator()
        self.last_stop = None
        gateway = await self._gateway()
        gateway.pause("the coordinator is loading the model", recovering=recovering)
        try:
            draft = prepared.draft if self.settings.spec == "draft" else None
            draft = draft or await self.resolve_draft(prepared.info)
            results = await preflight(prepared.plan.workers)
        except QuorumError as exc:
            gateway.pause(str(exc))
            raise
        speculation = Speculation(self.settings.spec, Path(draft.path) if draft else None)
        options = ServerOptions(
            port=free_port(),
            ctx=self.settings.ctx,
            slots=self.settings.slots,
            threads=self.threads,
            alias=prepared.path.name,
            api_key=self.access.api_key,
            repack=self.settings.repack,
            speculation=speculation,
        )
        binary = await asyncio.to_thread(server_binary)
        process = CoordinatorProcess(
            prepared.path,
            prepared.plan,
            options,
            [len(r.devices) for r in results] or None,
            binary=binary,
            explain=self._worker_end,
        )
        running = _Running(process, prepared)
        self._running = running
        await process.start()
        events = process.events()
        try:
            async for event in events:
                self.emit(event)
                if isinstance(event, Loaded):
                    running.realized, running.load_s = event.realized, event.load_s
                elif isinstance(event, Ready):
                    break
            else:
                reason = await process.failure_reason()
                gateway.pause(reason)
                self._running = None
                raise QuorumError(reason)
        except BaseException:
            await events.aclose()
            if self._running is running:
                self._running = None
            await process.stop()
            raise
        body = plan_body(
            prepared.path, prepared.plan, running.realized, running.load_s,
            [w.name for w in self.away],
        )  # fmt: skip
        gateway.serve(process.url, body)
        running.follower = asyncio.create_task(self._follow(running, events))
        self.emit(Serving(f"{gateway.url}/v1", prepared.plan, running.realized))
        return gateway.url

    async def _worker_end(self, worker: WorkerRef) -> str | None:
        """How a worker this deployment started ended, when its process is gone."""
        local = self.local
        if local is None:
            return None
        for process in local.workers:
            if process.ref == worker and not process.alive():
                return process.death(tail_lines=0)
        return None

    async def _gateway(self) -> Gateway:
        if self.gateway is None:
            gateway = Gateway(self.access.host, self.access.port, self.access.api_key)
            gateway.on_broken = self._on_broken
            await gateway.start()
            self.gateway = gateway
        return self.gateway

    async def _on_broken(self, url: str) -> bool:
        """A reply from `url` broke off: wait for that coordinator's end to be known, then
        whether another one is coming."""
        running = self._running
        if running is not None and running.process.url == url and running.follower is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.follower), REASON_WAIT)
        gateway = self.gateway
        return gateway is not None and (gateway.recovering or gateway.upstream not in (None, url))

    async def _follow(self, running: _Running, events: AsyncIterator[Any]) -> str | None:
        async for event in events:
            self.emit(event)
        reason = None if running.stopping else await running.process.failure_reason()
        self.last_stop = reason
        if self._running is running:
            self._running = None
        gateway = self.gateway
        if self._switching or gateway is None:
            return reason
        dead = running.process.dead
        if reason and self.failover and dead:
            gateway.failure = reason
            gateway.pause(reason, recovering=True)
            self.emit(FailingOver(running.prepared.plan, tuple(dead), reason, time.time()))
            self._recovery = asyncio.create_task(self._fail_over(running, reason))
            return reason
        gateway.pause(reason or "the coordinator was stopped")
        self.emit(Stopped(running.prepared.plan, reason))
        return reason

    async def _fail_over(self, running: _Running, reason: str) -> bool:
        """Re-plan on the survivors and serve again; the interrupted replies resume."""
        started = time.monotonic()
        prepared, plan = running.prepared, running.prepared.plan
        dead = list(running.process.dead)
        try:
            survivors = [w for w in plan.workers if w not in dead]
            results = await probe_all([w.endpoint for w in survivors], timeout=2.0)
            dead += [w for w, r in zip(survivors, results, strict=True) if not r.ok]
            alive = [(w, r) for w, r in zip(survivors, results, strict=True) if r.ok]
            free = [local_free(), *(r.free for _, r in alive)]
            new = survivor_plan(prepared.info, plan, dead, free, self.settings, prepared.draft)
            self.home = self.home or prepared
            self.away += [w for w in dead if w not in self.away]
            await self.start(replace(prepared, plan=new), recovering=True)
        except QuorumError as exc:
            why = f"{reason}; no failover: {exc}"
            self.last_stop = why
            if self.gateway is not None:
                self.gateway.pause(why)
            self.emit(Stopped(plan, why))
            return False
        self.emit(FailedOver(plan, new, tuple(dead), time.monotonic() - started))
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_away())
        return True

    async def _watch_away(self) -> None:
        """Probe the workers lost to failovers; once all answer for `rejoin_after` seconds
        and no reply is in flight, restore the home plan."""
        back: dict[str, float] = {}
        told: set[str] = set()
        while self.away:
            await asyncio.sleep(REJOIN_POLL)
            away = list(self.away)
            results = await probe_all([w.endpoint for w in away], timeout=1.0)
            now = time.monotonic()
            for worker, result in zip(away, results, strict=True):
                if not result.ok:
                    back.pop(worker.endpoint, None)
                    told.discard(worker.endpoint)
                    continue
                since = back.setdefault(worker.endpoint, now)
                quiet = self.rejoin_after if self.rejoin_after is not None else 0.0
                if now - since >= quiet and worker.endpoint not in told:
                    told.add(worker.endpoint)
                    self.emit(WorkerBack(worker, now - since))
            if self.rejoin_after is None or len(told) < len(away):
                continue
            if self.gateway is not None and self.gateway.in_flight == 0 and self.serving:
                with contextlib.suppress(QuorumError):
                    await self.rejoin()

    async def rejoin(self) -> None:
        """Serve the home plan again, with the workers that failovers had left out."""
        home = self.home
        if home is None:
            return
        self.home, self.away = None, []
        self._switching = True
        try:
            await self.start(home, recovering=True)
        finally:
            self._switching = False

    async def wait(self) -> str | None:
        """Until the deployment stops serving for good: the reason, or None when it was
        stopped. A failover that serves again is not an end."""
        while True:
            running = self._running
            if running is not None and running.follower is not None:
                await asyncio.shield(running.follower)
                continue
            recovery = self._recovery
            if recovery is not None and not recovery.done():
                await asyncio.shield(recovery)
                continue
            return self.last_stop

    async def stop_coordinator(self) -> None:
        running = self._running
        if running is None:
            return
        running.stopping = True
        await running.process.stop()
        if running.follower is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await running.follower
        if self._running is running:
            self._running = None

    @property
    def coordinator(self) -> CoordinatorProcess | None:
        """The llama-server child serving now, if any."""
        return self._running.process if self._running else None

    @property
    def serving(self) -> bool:
        running = self._running
        return running is not None and running.follower is not None and not self._switching

    async def generate(self, request: CompletionRequest) -> AsyncIterator[Piece | Completed]:
        """Stream a completion through Quorum's endpoint; a broken stream becomes the
        coordinator's own reason (which worker died) when it has one."""
        running = self._running
        if running is None or self.gateway is None:
            raise QuorumError("no coordinator is serving: start one first")
        try:
            async for item in stream_completion(self.gateway.url, request, self.access.api_key):
                yield item
        except QuorumError:
            follower = running.follower
            if follower is not None:
                with contextlib.suppress(TimeoutError):
                    reason = await asyncio.wait_for(asyncio.shield(follower), REASON_WAIT)
                    if reason:
                        raise QuorumError(reason) from None
            raise

    async def run(self, request: CompletionRequest, out: Any = None) -> RunResult:
        """One generation, its text written to `out` as it arrives."""
        running = self._running
        if running is None:
            raise QuorumError("no coordinator is serving: start one first")
        done: Completed | None = None
        async for item in self.generate(request):
            if isinstance(item, Piece):
                if out is not None:
                    out.write(item.text)
                    out.flush()
            else:
                done = item
        assert done is not None
        now = self._running or running
        return RunResult(now.prepared.plan, now.realized, now.load_s, done, now.process.cpu)

    async def close(self) -> None:
        """Stop the coordinator and the gateway; stop local workers, close SSH tunnels."""
        for task in (self._watch, self._recovery):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.stop_coordinator()
        if self.gateway is not None:
            await self.gateway.close()
            self.gateway = None
        if self.cluster is not None:
            await self.cluster.close()
            self.cluster = None
        if self.local is not None:
            await asyncio.to_thread(self.local.stop)
            self.local = None

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_local_workers(count: int) -> LocalCluster:
    """`count` workers on this machine, each with all its cores, as `quorum worker` has: only
    one stage computes at a time, and a batch or a long prompt uses them all (measured with
    `quorum bench engine --worker-threads`: 2 threads against 1 on 2 cores, the first token
    of a 1,000-token prompt in 5.8 s against 7.4 s, 4 clients 1.73x one against 1.43x)."""
    cluster = LocalCluster(paths.ensure(paths.data_dir() / "local-workers"))
    try:
        await asyncio.to_thread(cluster.start, count)
    except BaseException:
        await asyncio.to_thread(cluster.stop)
        raise
    return cluster
