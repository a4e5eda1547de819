"""The Quorum app: Cluster, Layers, Models and Chat tabs over the headless core."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Header, TabbedContent, TabPane

from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.deploy.events import (
    DeployEvent,
    FailedOver,
    Phase,
    PhaseChanged,
    RejoinFailed,
    Serving,
    WorkerBack,
)
from quorum_tui.deploy.placement import CacheCoverage, WeightsPlaced
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.deploy.pool import WorkerEvent
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.supervisor import Loaded, Loading
from quorum_tui.errors import QuorumError
from quorum_tui.tui import messages as msg
from quorum_tui.tui.chat import ChatPane
from quorum_tui.tui.cluster_pane import ClusterPane
from quorum_tui.tui.commands import QuorumCommands
from quorum_tui.tui.dialogs import ConfirmDialog, HelpScreen
from quorum_tui.tui.heap import freeze_startup_heap, thaw_heap
from quorum_tui.tui.hosts import COORDINATOR_HOST, HostStatus, LocalSampler, local_free, probe_host
from quorum_tui.tui.keymap import keymap_path, load_keymap, unknown_ids
from quorum_tui.tui.layermap import LayerMap
from quorum_tui.tui.layers_pane import LayersPane
from quorum_tui.tui.model_actions import ModelActions
from quorum_tui.tui.models_pane import ModelsPane
from quorum_tui.tui.session import DEMO_WORKERS, Setup, is_synthetic, proposal, sharding_advice
from quorum_tui.tui.ssh_actions import SshActions
from quorum_tui.tui.sshhosts import SshHosts

SAMPLE_EVERY = 2.0
NOTES_KEPT = 1000
SYNTHETIC_REPLY_TOKENS = 48
"""Replies of a random-weights model are noise: keep them short."""


class QuorumApp(SshActions, ModelActions):
    """Keyboard first, mouse everywhere; every action is also a `quorum` subcommand."""

    TITLE = "Quorum"
    CSS_PATH = "quorum.tcss"
    COMMANDS: ClassVar[set[Any]] = App.COMMANDS | {QuorumCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1,f1", "tab('cluster')", "Cluster", id="quorum.tab.cluster"),
        Binding("2,f2", "tab('layers')", "Layers", id="quorum.tab.layers"),
        Binding("3,f3", "tab('models')", "Models", id="quorum.tab.models"),
        Binding("4,f4", "tab('chat')", "Chat", id="quorum.tab.chat"),
        Binding("a", "apply", "Apply", id="quorum.apply"),
        Binding("ctrl+r", "rejoin", "Rejoin", id="quorum.rejoin", show=False),
        Binding("r", "refresh", "Probe", id="quorum.refresh", show=False),
        Binding("l", "toggle_log", "Log", id="quorum.log", show=False),
        Binding("question_mark", "help", "Keys", id="quorum.help"),
        Binding("ctrl+q", "quit", "Quit", id="quorum.quit", priority=True),
    ]

    def __init__(self, setup: Setup | None = None) -> None:
        super().__init__()
        self.setup = setup or Setup()
        self.info: ModelInfo | None = None
        self.model_path: Path | None = None
        self.plan: LayerPlan | None = None
        self.coverage: CacheCoverage | None = None
        """What the workers' tensor caches hold of the model, as the core last said."""
        self.hosts: list[HostStatus] = [HostStatus("coordinator", COORDINATOR_HOST, state="idle")]
        self.local_free_bytes: int | None = self.setup.local_free
        self.deployment = Deployment(
            Target(workers=tuple(self.setup.workers)),
            settings=self.setup.settings,
            on_event=self.deployed,
            rejoin_after=None,
        )
        self.errors: list[str] = []
        self.notes: list[str] = []
        """The log pane's lines (the last NOTES_KEPT)."""
        self.draft: ModelInfo | None = None
        """The draft model, once draft speculation is chosen and its vocabulary checked."""
        self.demo_applied = False
        self.demo_chatted = False
        self.auto_plans: dict[tuple[str, tuple[WorkerRef, ...]], LayerPlan] = {}
        self._sampler = LocalSampler()
        self._keymap_error: str | None = None
        self.ssh = SshHosts(self.deployment.pool, self.setup.cluster_file)
        self._init_hosts()
        try:
            self.set_keymap(load_keymap())
        except QuorumError as exc:
            self._keymap_error = str(exc)

    # ----- layout

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Cluster", id="cluster"):
                yield ClusterPane(id="cluster-pane")
            with TabPane("Layers", id="layers"):
                yield LayersPane(id="layers-pane")
            with TabPane("Models", id="models"):
                yield ModelsPane(id="models-pane")
            with TabPane("Chat", id="chat"):
                yield ChatPane(id="chat-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "local" if not self.setup.demo_workers else "local demo cluster"
        if self._keymap_error:
            self.report("keymap", self._keymap_error)
        else:
            unknown = unknown_ids(self._keymap, self.binding_ids())
            if unknown:
                self.report(
                    "keymap", f"{keymap_path()}: no binding has the id {', '.join(unknown)}"
                )
        self.show_hosts()
        self.show_plan()
        self.set_coordinator_status()
        if self.setup.temperature is not None:
            self.query_one(ChatPane).request_options["temperature"] = self.setup.temperature
        self.focus_tab("cluster")
        self.call_after_refresh(freeze_startup_heap)
        if self.setup.model:
            self.load_model(self.setup.model)
        elif self.setup.demo_workers:
            self.load_demo_model()
        if self.setup.live and not self.setup.demo_workers and not self.setup.workers:
            self.load_inventory()
        if self.setup.demo_workers:
            self.start_demo(self.setup.demo_workers)
        self.list_cached_models()
        if self.setup.live:
            self.set_interval(SAMPLE_EVERY, self.action_refresh)
            self.action_refresh()
        if self.setup.offer_demo:
            self.call_after_refresh(self.offer_demo)

    def _init_hosts(self) -> None:
        if self.setup.fixed_hosts:
            self.hosts = []
            for row in self.setup.fixed_hosts:
                fields = dict(row)
                cpu, memory = fields.pop("cpu", []), fields.pop("memory", [])
                host = HostStatus(**fields)
                host.cpu.extend(cpu)
                host.memory.extend(memory)
                self.hosts.append(host)
            return
        for ref in self.worker_refs:
            address = ref.endpoint.rsplit(":", 1)[0]
            self.hosts.append(HostStatus(ref.name, address, ref.endpoint))

    # ----- the core's state, as the app shows it

    @property
    def worker_refs(self) -> list[WorkerRef]:
        """Every worker the deployment's pool has: given, local demo workers, SSH hosts."""
        return self.deployment.pool.refs

    @property
    def url(self) -> str | None:
        """The OpenAI-compatible endpoint while a coordinator serves."""
        url = self.deployment.url
        return f"{url}/v1" if url else None

    @property
    def realized(self) -> list[int] | None:
        realized = self.deployment.realized
        return list(realized) if realized is not None else None

    def demo_refs(self) -> list[WorkerRef]:
        pool = self.deployment.pool
        return [r for r in pool.refs if pool.is_local(r)]

    def binding_ids(self) -> set[str]:
        ids = set()
        for holder in binding_holders():
            for binding in holder.BINDINGS:
                if isinstance(binding, Binding) and binding.id:
                    ids.add(binding.id)
        return ids

    # ----- showing state

    def show_hosts(self) -> None:
        up = sum(1 for h in self.hosts[1:] if h.state in ("ok", "serving"))
        title = f"{len(self.hosts) - 1} worker(s), {up} up"
        if self.setup.demo_workers:
            title = f"Local demo cluster on 127.0.0.1: {title}"
        for pane in self.query(ClusterPane):
            pane.show(title, self.hosts)

    def stage_free(self, plan: LayerPlan) -> list[int | None]:
        by_endpoint = {h.endpoint: h.free for h in self.hosts if h.endpoint}
        return [self.local_free_bytes, *(by_endpoint.get(w.endpoint) for w in plan.workers)]

    @property
    def advice(self) -> str:
        """Whether the model needs sharding at all (the rule Quorum teaches)."""
        if self.info is None:
            return ""
        return sharding_advice(self.info, self.deployment.settings, self.local_free_bytes)

    def show_plan(self) -> None:
        plan = self.plan
        free = self.stage_free(plan) if plan else []
        serving = self.deployment.serving_plan
        realized = self.realized if plan is not None and plan == serving else None
        for pane in self.query(LayersPane):
            pane.show(
                self.info, plan, free, self.deployment.settings, realized, self.advice, self.draft,
                self.coverage,
            )  # fmt: skip

    def set_coordinator_status(self, text: str | Text | None = None) -> None:
        if text is None:
            text = phase_text(self.deployment.phase, self.deployment.reason)
        for pane in self.query(LayersPane):
            pane.set_status(text)

    def report(self, what: str, reason: str) -> None:
        """An error the user should see: a notification and a log line."""
        self.errors.append(f"{what}: {reason}")
        self.notify(reason, title=what, severity="error", timeout=10)
        for pane in self.query(ClusterPane):
            pane.log_line(f"error: {what}: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        del self.notes[:-NOTES_KEPT]
        for pane in self.query(ClusterPane):
            pane.log_line(text)

    def set_chat_endpoint(self, url: str | None, summary: str, model: str = "") -> None:
        pane = self.query_one(ChatPane)
        if self.info is not None and is_synthetic(self.info):
            pane.max_tokens = SYNTHETIC_REPLY_TOKENS
        pane.set_endpoint(url, summary, self.advice if url else "", model)

    def replan(self) -> None:
        """A new plan from the planner when the model or the workers changed."""
        if self.info is None:
            self.plan = None
        else:
            self.plan = proposal(self.info, self.worker_refs)
        self.coverage = None
        self.show_plan()
        self.refresh_coverage()

    @work(exclusive=True, group="coverage", exit_on_error=False)
    async def refresh_coverage(self) -> None:
        """Ask the core what the workers' tensor caches hold of the model, then redraw."""
        if self.info is None:
            return
        try:
            self.coverage = await self.deployment.cache_coverage(self.info, self.worker_refs)
        except QuorumError as exc:
            self.note(f"tensor caches: {exc}")
            return
        self.show_plan()

    # ----- actions

    def action_tab(self, tab: str) -> None:
        self.set_focus(None)
        self.query_one(TabbedContent).active = tab
        self.focus_tab(tab)

    def focus_tab(self, tab: str) -> None:
        """Focus the tab's main widget (TabbedContent follows focus, so this comes after)."""
        main = {"cluster": "#hosts", "layers": "#layer-map", "models": "#cached",
                "chat": "#chat-input"}.get(tab)  # fmt: skip
        pane = self.query_one(f"TabPane#{tab}")
        found = pane.query(main) if main else None
        target = found.first() if found else None
        if target is None:
            target = next((w for w in pane.query("*") if w.focusable), None)
        if target is not None:
            target.focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows(), str(keymap_path())))

    def help_rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for holder in binding_holders():
            where = HOLDER_NAMES.get(holder.__name__, holder.__name__)
            for binding in holder.BINDINGS:
                if not isinstance(binding, Binding):
                    continue
                keys = self._keymap.get(binding.id or "", binding.key)
                shown = ", ".join(self.get_key_display(Binding(k, "")) for k in keys.split(","))
                rows.append((shown, binding.description, where, binding.id or ""))
        return rows

    def action_toggle_log(self) -> None:
        for pane in self.query(ClusterPane):
            pane.toggle_log()

    def action_auto_plan(self) -> None:
        """The planner's plan: measured once per model and workers, then restored at once."""
        if self.info is None or self.model_path is None:
            self.notify("no model yet: pick one on the Models tab", severity="warning")
            return
        key = (str(self.model_path), tuple(self.worker_refs))
        if key in self.auto_plans:
            self.plan = self.auto_plans[key]
            self.show_plan()
            self.notify(f"plan: {self.plan.summary()}")
        elif not self.setup.live or self.deployment.serving:
            self.replan()
            why = "stop the coordinator to measure" if self.deployment.serving else "not measured"
            self.notify(f"even plan ({why}): {self.plan.summary() if self.plan else '-'}")
        elif not self.measuring:
            self.measure_plan(key)

    @property
    def measuring(self) -> bool:
        return any(w.is_running for w in self.workers if w.group == "auto")

    @work(exclusive=True, group="auto", exit_on_error=False)
    async def measure_plan(self, key: tuple[str, tuple[WorkerRef, ...]]) -> None:
        assert self.info is not None
        workers = list(key[1])
        self.set_coordinator_status(
            f"Auto: measuring the coordinator and {len(workers)} worker(s), about half a minute..."
        )
        self.deployment.use_workers(workers)
        try:
            plan, explanation = await self.deployment.plan(self.info, PlanRequest(auto=True))
        except QuorumError as exc:
            self.post_message(msg.Failed("auto plan", str(exc)))
            return
        finally:
            self.set_coordinator_status()
        lines = explanation.lines() if explanation else []
        self.post_message(msg.AutoPlanned(key, plan, lines))

    def on_auto_planned(self, message: msg.AutoPlanned) -> None:
        self.auto_plans[message.key] = message.plan
        for line in message.lines:
            self.note(f"auto plan: {line}")
        if message.key == (str(self.model_path), tuple(self.worker_refs)):
            self.plan = message.plan
            self.show_plan()
            predicted = next((t for t in message.lines if t.startswith("predicted")), "")
            self.set_coordinator_status(f"Auto: {message.plan.summary()}; {predicted}")

    def action_speculation(self) -> None:
        """Cycle speculative decoding: off, n-grams, and the draft model when one was given;
        Apply restarts the coordinator with it."""
        settings = self.deployment.settings
        modes = ["off", "ngram", *(["draft"] if settings.draft else [])]
        mode = modes[(modes.index(settings.spec) + 1) % len(modes)]
        self.deployment.settings = replace(settings, spec=mode)
        self.draft = None
        if mode == "draft" and self.info is not None:
            self.check_draft(self.info)
        self.show_plan()
        self.notify(f"speculation: {mode} (Apply to restart the coordinator with it)")

    @work(exclusive=True, group="draft", exit_on_error=False)
    async def check_draft(self, target: ModelInfo) -> None:
        try:
            draft = await self.deployment.resolve_draft(target)
        except QuorumError as exc:
            self.deployment.settings = replace(self.deployment.settings, spec="off")
            self.post_message(msg.Failed("draft model", str(exc)))
            self.show_plan()
            return
        self.draft = draft
        self.show_plan()

    @on(LayerMap.Changed)
    def plan_changed(self, event: LayerMap.Changed) -> None:
        self.plan = event.plan
        self.show_plan()

    async def action_apply(self) -> None:
        if self.plan is None or self.model_path is None or self.info is None:
            self.notify("nothing to apply yet: a model and a plan are needed", severity="warning")
            return
        if self.measuring:
            self.notify("Auto is measuring the workers: Apply when it is done", severity="warning")
            return
        self.set_chat_endpoint(None, "")
        self.show_plan()
        self.run_coordinator(Prepared(self.model_path, self.info, self.plan, draft=self.draft))

    async def action_stop_coordinator(self) -> None:
        await self.stop_coordinator()

    async def stop_coordinator(self) -> None:
        self.workers.cancel_group(self, "coordinator")
        await self.deployment.stop_coordinator()
        self.set_chat_endpoint(None, "")

    @work(exclusive=True, group="coordinator", exit_on_error=False)
    async def run_coordinator(self, prepared: Prepared) -> None:
        self.deployment.use_workers(list(prepared.plan.workers))
        try:
            await self.deployment.start(prepared)
        except QuorumError as exc:
            self.post_message(msg.CoordinatorStopped(prepared.plan, str(exc)))

    def deployed(self, event: DeployEvent) -> None:
        """The deployment's events, from the app's own event loop, as messages."""
        self.post_message(msg.Deployed(event))

    def on_deployed(self, message: msg.Deployed) -> None:
        event = message.event
        if isinstance(event, PhaseChanged):
            self.on_phase(event)
        elif isinstance(event, Loading):
            self.note(f"coordinator log: {event.log_path}")
            self.note(event.cpu)
        elif isinstance(event, Loaded):
            self.show_plan()
            self.note(f"loaded in {event.load_s:.1f}s: {event.plan.summary()}")
        elif isinstance(event, Serving):
            self.on_serving(event)
        elif isinstance(event, FailedOver):
            self.plan = event.plan
            self.note(
                f"failed over in {event.seconds:.1f}s: {event.before.summary()} -> "
                f"{event.plan.summary()}"
            )
        elif isinstance(event, WorkerBack):
            self.note(f"worker {event.worker.name} ({event.worker.endpoint}) is back")
            self.notify(
                f"worker {event.worker.name} is back: press ctrl+r to use it again",
                title="rejoin",
                timeout=30,
            )
        elif isinstance(event, RejoinFailed):
            self.report("rejoin", event.reason)
        elif isinstance(event, WeightsPlaced):
            self.note(event.describe())
            self.refresh_coverage()
        elif isinstance(event, WorkerEvent):
            self.on_worker_event(event)

    def on_phase(self, event: PhaseChanged) -> None:
        """The deployment moved: the status line, the chat's endpoint and the host row."""
        self.set_coordinator_status(phase_text(event.phase, event.reason, event.plan))
        if event.phase in (Phase.RECOVERING, Phase.WAITING, Phase.FAILED) and event.reason:
            self.report(PHASE_WHAT[event.phase], event.reason)
        if event.phase in (Phase.WAITING, Phase.FAILED):
            self.set_chat_endpoint(None, event.plan.summary() if event.plan else "")
            self.query_one(ChatPane).report_error(f"The coordinator stopped: {event.reason}")
            self.hosts[0].state = "error"
            self.show_hosts()

    def on_worker_event(self, event: WorkerEvent) -> None:
        """A worker the deployment started died, is being restarted, or is back."""
        row = next((h for h in self.hosts if h.name == event.worker.name), None)
        if row is not None:
            row.state = {"up": "starting", "down": "down"}.get(event.state, event.state)
            row.reason = event.reason
            self.show_hosts()
        self.note(f"worker {event.worker.name}: {event.state}: {event.reason}")

    async def action_rejoin(self) -> None:
        if not self.deployment.away:
            self.notify("no worker is waiting to rejoin", severity="warning")
            return
        self.notify(f"using {', '.join(w.name for w in self.deployment.away)} again")
        await self.deployment.rejoin()

    def on_serving(self, event: Serving) -> None:
        plan = self.plan = event.plan
        coordinator = self.deployment.coordinator
        cpu = coordinator.cpu.summary() if coordinator and coordinator.cpu else ""
        self.set_coordinator_status(
            Text.assemble(
                ("● ready: ", "bold green"),
                f"serving {plan.summary()} at {event.url}",
                (f"\n{cpu}" if cpu else "", "dim"),
            )
        )
        self.note(f"coordinator ready at {event.url}")
        self.set_chat_endpoint(event.url, plan.summary(), event.model)
        self.hosts[0].state = "serving"
        self.show_hosts()
        if self.setup.demo_workers and not self.demo_chatted:
            self.demo_chatted = True
            self.action_tab("chat")

    def on_coordinator_stopped(self, message: msg.CoordinatorStopped) -> None:
        """A start that was asked for did not come up (the phase line says why)."""
        self.set_chat_endpoint(None, message.plan.summary())

    # ----- messages

    def on_failed(self, message: msg.Failed) -> None:
        self.report(message.what, message.reason)

    def on_note(self, message: msg.Note) -> None:
        self.note(message.text)

    # ----- cluster

    def offer_demo(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.action_demo()

        self.push_screen(
            ConfirmDialog(
                "No cluster yet",
                f"There is no cluster file yet. Start a local demo cluster: {DEMO_WORKERS} "
                "quorum workers on 127.0.0.1 serving SmolLM2-135M-Instruct, a small real model "
                "(it fits on one machine: it is sharded only to show how sharding works)?",
                yes="Start the demo",
                no="Not now",
            ),
            answer,
        )

    def action_demo(self) -> None:
        if self.demo_refs():
            self.notify("the demo cluster is already running")
            return
        self.setup.demo_workers = self.setup.demo_workers or DEMO_WORKERS
        self.query_one(ChatPane).request_options.setdefault("temperature", 0.0)
        self.sub_title = "local demo cluster"
        if self.info is None:
            self.load_demo_model()
        self.start_demo(self.setup.demo_workers)

    @work(exclusive=True, group="demo", exit_on_error=False)
    async def start_demo(self, count: int) -> None:
        self.note(f"starting {count} local workers on 127.0.0.1...")
        try:
            workers = await self.deployment.pool.add_local(count)
        except QuorumError as exc:
            self.post_message(msg.Failed("demo cluster", str(exc)))
            return
        self.post_message(msg.DemoStarted(workers))

    def on_demo_started(self, message: msg.DemoStarted) -> None:
        demo = [
            HostStatus(r.name, "127.0.0.1", r.endpoint, state="starting") for r in message.workers
        ]
        self.hosts = [self.hosts[0], *demo, *(h for h in self.hosts[1:] if self.is_ssh_row(h))]
        self.note(f"demo workers up: {', '.join(w.endpoint for w in message.workers)}")
        self.show_hosts()
        self.replan()
        self.action_refresh()
        self.demo_ready()

    def demo_ready(self) -> None:
        """The demo applies its plan by itself once its workers and model are both there,
        so the first thing a newcomer sees is a model ready to chat."""
        demo = self.demo_refs()
        if not demo or self.info is None or self.demo_applied or self.plan is None:
            return
        if {w.endpoint for w in self.plan.workers} != {r.endpoint for r in demo}:
            return
        self.demo_applied = True
        self.call_later(self.action_apply)

    def action_refresh(self) -> None:
        if self.setup.live:
            self.action_refresh_hosts()
            if self.ssh.up:
                self.sample_ssh_hosts()

    def action_refresh_hosts(self) -> None:
        self.sample_hosts(self.local_pids(), self.deployment.busy)

    def local_pids(self) -> dict[str, int]:
        """The processes of the demo workers the deployment started, by name."""
        pool = self.deployment.pool
        return {r.name: pid for r in self.demo_refs() if (pid := pool.pid(r)) is not None}

    @work(thread=True, exclusive=True, group="sample", exit_on_error=False)
    def sample_hosts(self, pids: dict[str, int], busy: set[str]) -> None:
        samples = []
        for host in list(self.hosts):
            sample = msg.Sample(host.name, host.endpoint)
            if host.address == COORDINATOR_HOST:
                sample.cpu, sample.used, sample.total = self._sampler.machine()
            else:
                pid = pids.get(host.name)
                if pid is not None:
                    measured = self._sampler.process(pid)
                    if measured is None:
                        sample.state, sample.reason = "down", "the worker process exited"
                    else:
                        sample.cpu, sample.used = measured
                        sample.total = self._sampler.total_memory()
                if sample.state is None and host.endpoint in busy:
                    sample.state = "serving"
                elif sample.state is None:
                    result = probe_host(host)
                    if result is not None:
                        sample.state, sample.reason = result.status, result.reason
                        sample.rtt_ms = result.rtt_ms
                        sample.free = result.free if result.ok else None
            samples.append(sample)
        self.post_message(msg.HostsSampled(samples, local_free()))

    def on_hosts_sampled(self, message: msg.HostsSampled) -> None:
        if self.setup.local_free is None and message.local_free is not None:
            self.local_free_bytes = message.local_free
        by_name = {h.name: h for h in self.hosts}
        for sample in message.samples:
            host = by_name.get(sample.name)
            if host is None:
                continue
            if sample.state is not None and sample.endpoint != host.endpoint:
                sample.state = sample.reason = None
            if sample.state is not None and sample.state != host.state:
                if sample.state in ("down", "unreachable") and host.state in ("ok", "serving"):
                    self.report(f"worker {host.name}", f"{host.endpoint}: {sample.reason}")
                host.state = sample.state
            if sample.reason is not None:
                host.reason = sample.reason
            if sample.rtt_ms is not None:
                host.rtt_ms = sample.rtt_ms
            if sample.free is not None:
                host.free = sample.free
            host.add_sample(sample.cpu, sample.used, sample.total)
        self.show_hosts()
        if self.plan is not None and self.deployment.phase != Phase.LOADING:
            self.show_plan()

    # ----- shutdown

    async def action_quit(self) -> None:
        self.workers.cancel_group(self, "coordinator")
        await self.deployment.close()
        self.exit()

    async def on_unmount(self) -> None:
        self.workers.cancel_group(self, "coordinator")
        await self.deployment.close()
        thaw_heap()


PHASE_WHAT = {
    Phase.RECOVERING: "failover",
    Phase.WAITING: "coordinator",
    Phase.FAILED: "coordinator",
}


def phase_text(phase: Phase, reason: str | None, plan: LayerPlan | None = None) -> str | Text:
    """The Layers screen's coordinator line for a phase of the deployment."""
    on = f" {plan.summary()}" if plan is not None else ""
    if phase == Phase.IDLE:
        return "coordinator: not started; press a (Apply) to load the plan"
    if phase == Phase.LOADING:
        return f"coordinator: loading{on}"
    if phase in (Phase.RECOVERING, Phase.REJOINING):
        word = "failing over" if phase == Phase.RECOVERING else "rejoining"
        return Text.assemble((f"◆ {word}: ", "bold yellow"), reason or f"loading{on}")
    if phase == Phase.WAITING:
        return Text.assemble(
            ("✖ waiting: ", "bold red"), f"{reason}; serving again as workers come back"
        )
    if phase == Phase.FAILED:
        return Text.assemble(("✖ coordinator stopped: ", "bold red"), reason or "")
    if phase == Phase.STOPPED:
        return "coordinator: stopped"
    return f"coordinator: {phase}{on}"


def binding_holders() -> list[type[Any]]:
    return [
        QuorumApp, ClusterPane, LayerMap, LayersPane, ModelsPane, ChatPane, ConfirmDialog,
        HelpScreen,
    ]  # fmt: skip


HOLDER_NAMES = {
    "QuorumApp": "everywhere",
    "ClusterPane": "Cluster",
    "LayerMap": "Layers: the map",
    "LayersPane": "Layers",
    "ModelsPane": "Models",
    "ChatPane": "Chat",
    "ConfirmDialog": "dialogs",
    "HelpScreen": "this help",
}
