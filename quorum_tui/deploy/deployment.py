"""One deployment: workers + model + plan -> a coordinator serving at Quorum's own endpoint.

Every entry point goes through here: `quorum run`, `serve`, `up`, `bench`, the demo and the
app. The deployment is a state machine (`Phase`) whose every transition is a `PhaseChanged`
event; transitions run one at a time, and a new intent (start, stop, close) interrupts the one
under way. Only `close()` (or `--no-failover`'s first failure) ends it: a worker that dies or
comes back changes the plan, not whether Quorum serves, and a failure while serving leaves it
`waiting` with the reason, trying again as workers return. The workers it started, local and
SSH, are the pool's (deploy.pool) to watch and restart. The gateway's address stays the same
across coordinator restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from quorum_tui.cluster.bringup import BringUpOptions, Cluster
from quorum_tui.cluster.inventory import load_inventory, resolve_path
from quorum_tui.deploy.events import (
    DeployEvent,
    EventSink,
    FailedOver,
    FailingOver,
    ModelReady,
    Phase,
    PhaseChanged,
    Planned,
    RejoinFailed,
    Serving,
    WorkerBack,
    WorkersReady,
)
from quorum_tui.deploy.failover import survivor_plan
from quorum_tui.deploy.gateway import Gateway
from quorum_tui.deploy.placement import CacheCoverage, WeightsKeeper
from quorum_tui.deploy.plans import PlanRequest, make_plan
from quorum_tui.deploy.pool import WorkerPool
from quorum_tui.engine.completion import Completed, CompletionRequest, Piece, stream_completion
from quorum_tui.engine.cpucheck import CpuVerdict
from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.llama_server import ServerOptions, server_binary
from quorum_tui.engine.localcluster import free_port
from quorum_tui.engine.memory import misfits
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import Explanation
from quorum_tui.engine.probe import probe_all
from quorum_tui.engine.room import room
from quorum_tui.engine.server_args import as_loaded
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.speculation import check_draft
from quorum_tui.engine.supervisor import (
    CoordinatorEvent,
    CoordinatorProcess,
    Explain,
    Loaded,
    Ready,
    preflight,
)
from quorum_tui.errors import QuorumError
from quorum_tui.wire import PlanBody, StageBody

log = logging.getLogger(__name__)

REJOIN_AFTER = 30.0
"""Seconds a worker lost to a failover must answer again before it is used again."""


@dataclass(frozen=True)
class Timing:
    """How often the deployment looks and how long it waits (tests shorten them)."""

    rejoin_poll: float = 2.0
    """Seconds between probes of the workers lost to failovers."""
    reason_wait: float = 20.0
    """Seconds a broken reply waits to learn whether another coordinator takes it over."""
    retry_first: float = 2.0
    retry_max: float = 60.0
    """A deployment waiting after a failure tries again after 2 s, doubling up to 60 s; a
    rejoin that failed is tried again on the same back-off."""
    crash_window: float = 10.0
    """A coordinator that dies on its own (all its workers alive, no RPC connection lost)
    within this many seconds of starting to serve is crashing: the deployment waits (with the
    back-off) instead of starting it again at once."""


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
    """The coordinator's room: this machine's and its cgroup's, less the headroom (the same
    figure Quorum's workers report for themselves)."""
    return room().free


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


class Coordinator(Protocol):
    """What the deployment needs of a coordinator process (engine.supervisor's, or a test's)."""

    dead: list[WorkerRef]
    cpu: CpuVerdict | None

    @property
    def url(self) -> str: ...

    async def start(self) -> None: ...
    def events(self, stall_check: float = 10.0) -> AsyncIterator[CoordinatorEvent]: ...
    async def stop(self, grace: float = 5.0) -> None: ...
    async def failure_reason(self) -> str: ...
    def lost_a_worker(self) -> bool: ...


Launcher = Callable[
    [Path, LayerPlan, ServerOptions, list[int] | None, Explain], Awaitable[Coordinator]
]


async def launch_llama_server(
    model: Path,
    plan: LayerPlan,
    options: ServerOptions,
    device_counts: list[int] | None,
    explain: Explain,
) -> Coordinator:
    """llama-server, with the CPU kernels this machine proved (the check runs off the loop)."""
    binary = await asyncio.to_thread(server_binary)
    return CoordinatorProcess(model, plan, options, device_counts, binary=binary, explain=explain)


@dataclass(eq=False)
class _Running:
    """A coordinator this deployment started, and what became of it."""

    process: Coordinator
    prepared: Prepared
    realized: tuple[int, ...] = ()
    load_s: float = 0.0
    stopping: bool = False
    ended: asyncio.Future[str | None] = field(default_factory=lambda: _future())
    """Why it stopped (None: it was asked to), once it has."""
    successor: asyncio.Future[bool] = field(default_factory=lambda: _future())
    """Whether another coordinator takes over its replies, once that is decided."""

    def decide(self, coming: bool) -> None:
        if not self.successor.done():
            self.successor.set_result(coming)


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


class Deployment:
    """Workers, model and plan to a coordinator behind a stable endpoint; `close` ends all.

    Events go to `on_event` as they happen. Workers this deployment started stop with it
    (local ones) or keep running with their tunnels closed (SSH hosts).
    """

    def __init__(
        self,
        target: Target | None = None,
        settings: EngineSettings | None = None,
        access: Access | None = None,
        on_event: EventSink | None = None,
        failover: bool = True,
        rejoin_after: float | None = REJOIN_AFTER,
        launcher: Launcher = launch_llama_server,
        timing: Timing | None = None,
        stage_weights: bool = True,
    ) -> None:
        self.target = target or Target()
        self.failover = failover
        """Whether a worker's death re-plans on the survivors and resumes the replies."""
        self.stage_weights = stage_weights
        """Whether hosts stage, while the plan serves, the layers a failover would move to them."""
        self.rejoin_after = rejoin_after
        """Seconds a dead worker must answer again before the home plan is restored by
        itself (None: only when `rejoin` is called)."""
        self.settings = settings or EngineSettings()
        self.access = access or Access()
        self.on_event = on_event
        self.launcher = launcher
        self.timing = timing or Timing()
        self.pool = WorkerPool(self.emit)
        self.weights = WeightsKeeper(self.pool, self.emit)
        """Fills the hosts' tensor caches from their own copies, and stages failover layers."""
        self.pool.add_given(self.target.workers)
        self.workers: list[WorkerRef] = list(self.target.workers)
        """The workers plans are made over (all of the pool's unless `use_workers` chose)."""
        self.gateway: Gateway | None = None
        self.phase = Phase.IDLE
        self.reason: str | None = None
        """Why the deployment is in its phase, when a failure put it there."""
        self.home: Prepared | None = None
        """The plan served before failovers, restored when the dead workers are back."""
        self.away: list[WorkerRef] = []
        """Workers lost to failovers, not yet back in the plan."""
        self._running: _Running | None = None
        self._served: dict[str, _Running] = {}
        """The coordinators started, by URL, for replies that break off from one of them."""
        self._wanted: Prepared | None = None
        """The plan a waiting deployment tries to serve again."""
        self._lock = asyncio.Lock()
        self._transition: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._retry_delay = self.timing.retry_first
        self._rejoin_delay = self.timing.retry_first
        self._rejoin_not_before = 0.0
        self._stopped = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._measuring: set[str] = set()
        self._served_since = 0.0

    def emit(self, event: DeployEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _enter(self, phase: Phase, reason: str | None, plan: LayerPlan | None) -> None:
        if (phase, reason) == (self.phase, self.reason):
            return
        previous, self.phase, self.reason = self.phase, phase, reason
        log.info("deployment: %s -> %s%s", previous, phase, f" ({reason})" if reason else "")
        self.emit(PhaseChanged(phase, previous, reason, plan))

    # ----- what it is doing

    @property
    def local_workers(self) -> int:
        """How many of the plan's workers compute on this machine's cores."""
        return sum(1 for w in self.workers if self.pool.runs_here(w))

    @property
    def threads(self) -> int:
        """The coordinator's threads, decided once by the settings for these workers."""
        return self.settings.coordinator_threads(self.local_workers)

    @property
    def url(self) -> str | None:
        """Quorum's endpoint while a coordinator serves behind it."""
        gateway = self.gateway
        return gateway.url if gateway is not None and gateway.upstream else None

    @property
    def coordinator(self) -> Coordinator | None:
        """The coordinator serving now, if any."""
        return self._running.process if self._running else None

    @property
    def serving(self) -> bool:
        return self.phase == Phase.SERVING

    @property
    def serving_plan(self) -> LayerPlan | None:
        """The plan of the coordinator running (or loading) now."""
        return self._running.prepared.plan if self._running else None

    @property
    def realized(self) -> tuple[int, ...] | None:
        """Where llama.cpp put each layer (output last), once the coordinator has loaded."""
        running = self._running
        return running.realized if running is not None and running.realized else None

    @property
    def busy(self) -> set[str]:
        """The endpoints a coordinator or a measurement is using: an RPC worker serves one
        client at a time, so a probe of one of these would wait."""
        plan = self.serving_plan
        return {w.endpoint for w in plan.workers} if plan else set(self._measuring)

    @property
    def cluster(self) -> Cluster | None:
        """The cluster file's hosts this deployment brought up, if any."""
        return self.pool.clusters[0] if self.pool.clusters else None

    # ----- workers, model, plan

    def use_workers(self, workers: Sequence[WorkerRef]) -> None:
        """Plan over `workers` (some of the pool's) from now on."""
        self.workers = list(workers)

    async def connect_workers(self) -> list[WorkerRef]:
        """Bring the target's workers up: SSH hosts with their tunnels, or local workers."""
        warnings: list[str] = []
        target = self.target
        if target.cluster_file is not None and not self.pool.clusters:
            if target.workers:
                raise QuorumError("use either --cluster or --worker, not both")
            inventory = load_inventory(resolve_path(target.cluster_file))
            self.settings = self.settings.with_server_args(inventory.server_args)
            cluster = await self.pool.add_hosts(inventory, target.bring_up or BringUpOptions())
            if target.all_hosts:
                cluster.require_all()
            warnings = [f"{r.host.name}: {w}" for r in cluster.results for w in r.warnings]
        elif target.local_workers and self.pool.local is None:
            await self.pool.add_local(target.local_workers)
        self.workers = self.pool.refs
        self.emit(WorkersReady(tuple(self.workers), tuple(warnings)))
        return self.workers

    async def resolve(self, spec: str) -> tuple[Path, ModelInfo]:
        """The model's local file (pulled on first use, with progress events) and its facts
        as the settings load it (KV cache types, LoRA adapters)."""
        from quorum_tui.models.resolve import resolve_model

        loop = asyncio.get_running_loop()

        def progress(event: Any) -> None:
            loop.call_soon_threadsafe(self.emit, event)

        path = await asyncio.to_thread(resolve_model, spec, progress if self.on_event else None)
        server = self.settings.server
        info = await asyncio.to_thread(lambda: as_loaded(inspect_model(path), server))
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
        self._measuring = {w.endpoint for w in self.workers} if request.auto else set()
        cached: dict[str, tuple[int, ...]] = {}
        home = self.home.plan if self.home is not None else None
        keep = [p for p in (home, self.serving_plan) if p is not None]
        try:
            if request.auto:
                cached = (await self.cache_coverage(info)).held
            plan, explanation = await make_plan(
                info, self.workers, request, self.settings, self.threads, draft, cached, keep
            )
        finally:
            self._measuring = set()
        self.emit(Planned(plan, explanation))
        return plan, explanation

    async def cache_coverage(
        self, info: ModelInfo, workers: Sequence[WorkerRef] | None = None
    ) -> CacheCoverage:
        """How much of each layer of `info` the tensor caches of `workers` (the plan's
        workers by default) hold."""
        chosen = self.workers if workers is None else workers
        return await self.weights.cached_layers(Path(info.path), info, chosen)

    # ----- intents

    async def start(self, prepared: Prepared) -> str:
        """Serve `prepared` (stopping what served before); returns Quorum's endpoint.

        A start that does not come up (a worker that fails its check, a plan llama.cpp did not
        realize) raises QuorumError with the reason, and leaves the deployment `failed`.
        """

        if self.phase == Phase.STOPPED:
            raise QuorumError("this deployment was closed: start a new one")

        async def apply() -> str:
            self._forget_failures()
            self._wanted = None
            try:
                return await self._launch(prepared, Phase.LOADING)
            except QuorumError as exc:
                self._enter(Phase.FAILED, str(exc), prepared.plan)
                raise

        return await self._exclusive(apply(), interrupt=True)

    async def stop_coordinator(self) -> None:
        """Stop serving (the deployment stays, idle, until the next start)."""

        async def stop() -> None:
            self._forget_failures()
            await self._stop_running(successor=False)
            if self.gateway is not None:
                self.gateway.pause("the coordinator was stopped")
            if self.phase not in (Phase.IDLE, Phase.STOPPED):
                self._enter(Phase.IDLE, None, None)

        await self._exclusive(stop(), interrupt=True)

    async def rejoin(self) -> None:
        """Serve the home plan again now, with the workers failovers had left out."""
        await self._exclusive(self._rejoin(), interrupt=False)

    async def wait(self) -> str | None:
        """Until the deployment is stopped for good: why (None when it was asked to)."""
        await self._stopped.wait()
        return self.reason

    async def close(self) -> None:
        """Stop the coordinator and the gateway; stop local workers, close SSH tunnels."""

        async def close() -> None:
            self._forget_failures()
            await self._stop_running(successor=False)

        if self.phase == Phase.STOPPED:
            return
        await self._exclusive(close(), interrupt=True)
        await self._finish(None)

    async def _close_for(self, reason: str) -> None:
        """End after a failure that --no-failover does not recover from."""
        await self._exclusive(self._stop_running(successor=False), interrupt=True)
        await self._finish(reason)

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- transitions, one at a time

    async def _exclusive(self, work: Coroutine[Any, Any, Any], interrupt: bool) -> Any:
        """Run `work` as the only transition; `interrupt` cancels the one under way first."""
        if interrupt and self._transition is not None:
            self._transition.cancel()
        try:
            await self._lock.acquire()
        except BaseException:
            work.close()
            raise
        try:
            task = asyncio.ensure_future(work)
            self._transition = task
            try:
                return await task
            finally:
                if self._transition is task:
                    self._transition = None
        finally:
            self._lock.release()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task whose failure is logged, never lost."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def _finish(self, reason: str | None) -> None:
        """The end: nothing runs any more, and `wait()` returns `reason`."""
        for task in [self._watch, self._retry, *self._tasks]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                await asyncio.wait({task})
        if self.gateway is not None:
            await self.gateway.close()
            self.gateway = None
        await self.weights.stop_staging()
        await self.pool.close()
        self._enter(Phase.STOPPED, reason, None)
        self._stopped.set()

    # ----- the coordinator

    async def _launch(self, prepared: Prepared, phase: Phase, recovering: bool = False) -> str:
        """Stop the coordinator serving now (its replies wait for this one) and serve
        `prepared`; QuorumError with the reason when it does not come up."""
        await self._stop_running(successor=True)
        self._enter(phase, None if phase == Phase.LOADING else self.reason, prepared.plan)
        gateway = await self._gateway()
        gateway.pause("the coordinator is loading the model", recovering=recovering)
        try:
            draft = prepared.draft if self.settings.spec == "draft" else None
            draft = draft or await self.resolve_draft(prepared.info)
            results = await preflight(prepared.plan.workers)
            free = [local_free(), *(r.free for r in results)]
            unfit = misfits(
                prepared.info, prepared.plan, free, self.settings.ctx, self.settings.slots, draft
            )
            if unfit:
                raise QuorumError(
                    f"the plan {prepared.plan.summary()} does not fit, and nothing was loaded: "
                    + "; ".join(unfit)
                    + ". Give those stages fewer layers (--split, or drag on the Layers screen), "
                    "let --auto plan by memory, or lower --ctx or --slots"
                )
            await self.weights.before_load(prepared.path, prepared.plan)
        except QuorumError as exc:
            gateway.pause(str(exc))
            raise
        options = ServerOptions.from_settings(
            self.settings,
            self.threads,
            prepared.path,
            Path(draft.path) if draft else None,
            self.access.api_key,
            free_port(),
        )
        process = await self.launcher(
            prepared.path,
            prepared.plan,
            options,
            [len(r.devices) for r in results] or None,
            self._worker_end,
        )
        running = _Running(process, prepared)
        self._running = running
        self._served = {**dict(list(self._served.items())[-7:]), process.url: running}
        events: AsyncIterator[CoordinatorEvent] | None = None
        try:
            await process.start()
            events = process.events()
            async for event in events:
                self.emit(event)
                if isinstance(event, Loaded):
                    running.realized, running.load_s = event.realized, event.load_s
                elif isinstance(event, Ready):
                    break
            else:
                reason = await process.failure_reason()
                gateway.pause(reason)
                raise QuorumError(reason)
        except BaseException:
            if events is not None:
                await events.aclose()  # type: ignore[attr-defined]
            if self._running is running:
                self._running = None
            running.stopping = True
            await process.stop()
            if not running.ended.done():
                running.ended.set_result(None)
            raise
        away = [w.name for w in self.away if w not in prepared.plan.workers]
        body = plan_body(prepared.path, prepared.plan, running.realized, running.load_s, away)
        gateway.public_metrics = self.settings.server.metrics
        gateway.serve(process.url, body)
        self._spawn(self._follow(running, events), "coordinator follower")
        self._enter(Phase.SERVING, None, prepared.plan)
        self._served_since = time.monotonic()
        self._retry_delay = self.timing.retry_first
        self.emit(Serving(f"{gateway.url}/v1", prepared.plan, running.realized, options.alias))
        if self.failover and self.stage_weights:
            self.weights.stage(
                prepared.path, prepared.info, prepared.plan, free, self.settings, draft
            )
        return gateway.url

    async def _stop_running(self, successor: bool) -> None:
        """Stop the coordinator serving now; `successor` says whether another follows."""
        running, self._running = self._running, None
        if running is None:
            return
        running.stopping = True
        running.decide(successor)
        await running.process.stop()

    async def _gateway(self) -> Gateway:
        if self.gateway is None:
            gateway = Gateway(self.access.host, self.access.port, self.access.api_key)
            gateway.on_broken = self._on_broken
            await gateway.start()
            self.gateway = gateway
        return self.gateway

    async def _worker_end(self, worker: WorkerRef) -> str | None:
        """How a worker the pool started ended, when its process is gone."""
        return await self.pool.death(worker)

    async def _on_broken(self, url: str) -> bool:
        """A reply from `url` broke off: whether another coordinator takes it over (once the
        deployment has decided, within `timing.reason_wait` seconds)."""
        running = self._served.get(url)
        if running is None:
            gateway = self.gateway
            return gateway is not None and gateway.recovering
        try:
            wait = self.timing.reason_wait
            return await asyncio.wait_for(asyncio.shield(running.successor), wait)
        except TimeoutError:
            return False

    async def _follow(self, running: _Running, events: AsyncIterator[Any]) -> None:
        """Pass on the coordinator's events until it exits; an exit nobody asked for is a
        failure the deployment handles."""
        async for event in events:
            self.emit(event)
        if running.stopping:
            running.ended.set_result(None)
            return
        reason = await running.process.failure_reason()
        running.ended.set_result(reason)
        self._spawn(self._exclusive(self._died(running, reason), interrupt=False), "failover")

    async def _died(self, running: _Running, reason: str) -> None:
        """The coordinator stopped by itself: fail over to the survivors (or end, without
        failover); a failover that cannot serve, or a coordinator that keeps crashing with its
        workers alive, leaves the deployment waiting (and trying again, with a back-off)."""
        if self._running is not running:
            running.decide(False)
            return
        self._running = None
        gateway = await self._gateway()
        if not self.failover:
            running.decide(False)
            gateway.pause(reason)
            self._closing = asyncio.create_task(self._close_for(reason), name="close")
            return
        dead = list(running.process.dead)
        crashing = time.monotonic() - self._served_since < self.timing.crash_window
        if not dead and not running.process.lost_a_worker() and crashing:
            running.decide(False)
            self._wait(self.home or running.prepared, reason)
            return
        self.pool.look_now()
        gateway.failure = reason
        gateway.pause(reason, recovering=True)
        running.decide(True)
        self.emit(FailingOver(running.prepared.plan, tuple(dead), reason, time.time()))
        self._enter(Phase.RECOVERING, reason, running.prepared.plan)
        started = time.monotonic()
        prepared = running.prepared
        try:
            new = await self._survivors(prepared, dead)
            await self._launch(replace(prepared, plan=new), Phase.RECOVERING, recovering=True)
        except QuorumError as exc:
            self._wait(self.home or prepared, f"{reason}; no failover: {exc}")
            return
        self.emit(FailedOver(prepared.plan, new, tuple(self.away), time.monotonic() - started))

    async def _survivors(self, prepared: Prepared, dead: list[WorkerRef]) -> LayerPlan:
        """The plan over the workers of `prepared` that answer (the dead ones' layers moved)."""
        plan = prepared.plan
        survivors = [w for w in plan.workers if w not in dead]
        results = await probe_all([w.endpoint for w in survivors], timeout=2.0)
        dead = dead + [w for w, r in zip(survivors, results, strict=True) if not r.ok]
        alive = [r for r in results if r.ok]
        free = [local_free(), *(r.free for r in alive)]
        new = survivor_plan(prepared.info, plan, dead, free, self.settings, prepared.draft)
        if dead:
            self.home = self.home or prepared
            self.away += [w for w in dead if w not in self.away]
            self._watch_away()
        return new

    # ----- waiting, rejoining

    def _wait(self, prepared: Prepared, reason: str) -> None:
        """Nothing serves: say why (503 with the reason), and try again with a back-off."""
        self._wanted = prepared
        if self.gateway is not None:
            self.gateway.pause(reason)
        self._enter(Phase.WAITING, reason, None)
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.timing.retry_max)
        if self._retry is not None:
            self._retry.cancel()
        self._retry = self._spawn(self._retry_after(delay), "retry")
        self._watch_away()

    async def _retry_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry = None
        await self._exclusive(self._try_again(), interrupt=False)

    async def _try_again(self) -> None:
        """Serve again after a failure: the home plan when all its workers answer, else the
        plan its answering workers can hold."""
        wanted = self._wanted
        if self.phase != Phase.WAITING or wanted is None:
            return
        try:
            new = await self._survivors(wanted, [])
            prepared = replace(wanted, plan=new)
            phase = Phase.REJOINING if new == wanted.plan and self.away else Phase.RECOVERING
            await self._launch(prepared, phase, recovering=True)
        except QuorumError as exc:
            self._wait(wanted, str(exc))
            return
        if new == wanted.plan:
            self.home, self.away, self._wanted = None, [], None

    def _watch_away(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = self._spawn(self._watch_loop(), "rejoin watch")

    async def _watch_loop(self) -> None:
        """Probe the workers lost to failovers; once all answer for `rejoin_after` seconds
        and no reply is in flight, restore the home plan (or, while waiting, try at once)."""
        back: dict[str, float] = {}
        told: set[str] = set()
        while self.away:
            await asyncio.sleep(self.timing.rejoin_poll)
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
            if len(told) < len(away) or now < self._rejoin_not_before:
                continue
            tried = False
            if self.phase == Phase.WAITING:
                tried = True
                await self._exclusive(self._try_again(), interrupt=False)
            elif self.rejoin_after is not None and self.phase == Phase.SERVING:
                gateway = self.gateway
                if gateway is not None and gateway.in_flight == 0:
                    tried = True
                    await self._exclusive(self._rejoin(), interrupt=False)
            if tried and self.away:
                told.clear()
                back.clear()

    async def _rejoin(self) -> None:
        """The home plan again; if it does not come up, the plan that served goes on serving
        and the rejoin is tried again later (after a back-off)."""
        home, running = self.home, self._running
        if home is None or running is None or self.phase != Phase.SERVING:
            return
        returning = tuple(self.away)
        names = ", ".join(w.name for w in returning)
        results = await probe_all([w.endpoint for w in returning], timeout=2.0)
        silent = [
            f"{w.name} {r.reason}" for w, r in zip(returning, results, strict=True) if not r.ok
        ]
        if silent:
            self.emit(RejoinFailed(returning, f"not back yet: {'; '.join(silent)}", 0.0))
            return
        self._enter(Phase.REJOINING, f"{names} answer again", home.plan)
        try:
            await self._launch(home, Phase.REJOINING, recovering=True)
        except QuorumError as exc:
            delay = self._rejoin_delay
            self._rejoin_delay = min(delay * 2, self.timing.retry_max)
            self._rejoin_not_before = time.monotonic() + delay
            self.emit(RejoinFailed(returning, str(exc), delay))
            self._enter(Phase.RECOVERING, f"the rejoin failed: {exc}", running.prepared.plan)
            try:
                await self._launch(running.prepared, Phase.RECOVERING, recovering=True)
            except QuorumError as again:
                self._wait(home, f"the rejoin failed ({exc}), and so did {again}")
            return
        self.home, self.away, self._rejoin_delay = None, [], self.timing.retry_first

    def _forget_failures(self) -> None:
        """A stop asked for: no failover memory, no retries."""
        for task in (self._watch, self._retry):
            if task is not None:
                task.cancel()
        self._watch = self._retry = None
        self.home, self.away, self._wanted = None, [], None

    # ----- generating

    async def generate(self, request: CompletionRequest) -> AsyncIterator[Piece | Completed]:
        """Stream a completion through Quorum's endpoint; a broken stream ends with why the
        deployment could not finish it (a failover that could not serve says what is
        missing), or else why the coordinator died (which worker)."""
        running = self._running
        if running is None or self.gateway is None:
            raise QuorumError("no coordinator is serving: start one first")
        try:
            async for item in stream_completion(self.gateway.url, request, self.access.api_key):
                yield item
        except QuorumError:
            with contextlib.suppress(TimeoutError):
                wait = self.timing.reason_wait
                died = await asyncio.wait_for(asyncio.shield(running.ended), wait)
                settled = self.phase in (Phase.WAITING, Phase.STOPPED, Phase.FAILED)
                reason = self.reason if settled and self.reason else died
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
