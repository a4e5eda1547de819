"""The Quorum app: Cluster, Layers, Models and Chat tabs over the headless core."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Header, TabbedContent, TabPane

from quorum_tui.deploy.deployment import Deployment, Prepared, start_local_workers
from quorum_tui.deploy.events import (
    DeployEvent,
    FailedOver,
    FailingOver,
    Serving,
    Stopped,
    WorkerBack,
)
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.localcluster import LocalCluster
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
        self.worker_refs: list[WorkerRef] = list(self.setup.workers)
        self.plan: LayerPlan | None = None
        self.hosts: list[HostStatus] = [HostStatus("coordinator", COORDINATOR_HOST, state="idle")]
        self.local_free_bytes: int | None = self.setup.local_free
        self.cluster: LocalCluster | None = None
        self.pids: dict[str, int] = {}
        self.deployment = Deployment(
            settings=self.setup.settings, on_event=self.deployed, rejoin_after=None
        )
        self.coordinator_state = "idle"
        self.serving_plan: LayerPlan | None = None
        self.realized: list[int] | None = None
        self.url: str | None = None
        self.errors: list[str] = []
        self.workers_in_use: set[str] = set()
        self.workers_back: set[str] = set()
        """Workers lost to a failover that answer again: ctrl+r uses them."""
        self.draft: ModelInfo | None = None
        """The draft model, once draft speculation is chosen and its vocabulary checked."""
        self.demo_applied = False
        self.demo_chatted = False
        self.auto_plans: dict[tuple[str, tuple[WorkerRef, ...]], LayerPlan] = {}
        self._sampler = LocalSampler()
        self._keymap_error: str | None = None
        self.ssh = SshHosts(self.setup.cluster_file)
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
        realized = self.realized if plan is not None and plan == self.serving_plan else None
        for pane in self.query(LayersPane):
            pane.show(
                self.info, plan, free, self.deployment.settings, realized, self.advice, self.draft
            )

    def set_coordinator_status(self, text: str | Text | None = None) -> None:
        if text is None:
            text = {
                "idle": "coordinator: not started; press a (Apply) to load the plan",
                "stopped": "coordinator: stopped",
            }.get(self.coordinator_state, f"coordinator: {self.coordinator_state}")
        for pane in self.query(LayersPane):
            pane.set_status(text)

    def report(self, what: str, reason: str) -> None:
        """An error the user should see: a notification and a log line."""
        self.errors.append(f"{what}: {reason}")
        self.notify(reason, title=what, severity="error", timeout=10)
        for pane in self.query(ClusterPane):
            pane.log_line(f"error: {what}: {reason}")

    def note(self, text: str) -> None:
        for pane in self.query(ClusterPane):
            pane.log_line(text)

    def set_chat_endpoint(self, url: str | None, summary: str) -> None:
        pane = self.query_one(ChatPane)
        if self.info is not None and is_synthetic(self.info):
            pane.max_tokens = SYNTHETIC_REPLY_TOKENS
        pane.set_endpoint(url, summary, self.advice if url else "")

    def replan(self) -> None:
        """A new plan from the planner when the model or the workers changed."""
        if self.info is None:
            self.plan = None
        else:
            self.plan = proposal(self.info, self.worker_refs)
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

    @property
    def coordinator_busy(self) -> bool:
        return any(w.is_running for w in self.workers if w.group == "coordinator")

    @work(exclusive=True, group="auto", exit_on_error=False)
    async def measure_plan(self, key: tuple[str, tuple[WorkerRef, ...]]) -> None:
        assert self.info is not None
        workers = list(key[1])
        self.set_coordinator_status(
            f"Auto: measuring the coordinator and {len(workers)} worker(s), about half a minute..."
        )
        self.workers_in_use = {w.endpoint for w in workers}
        self.deployment.use_workers(workers, self.local_count(workers))
        try:
            plan, explanation = await self.deployment.plan(self.info, PlanRequest(auto=True))
        except QuorumError as exc:
            self.post_message(msg.Failed("auto plan", str(exc)))
            return
        finally:
            self.workers_in_use = set()
            self.set_coordinator_status()
        lines = explanation.lines() if explanation else []
        self.post_message(msg.AutoPlanned(key, plan, lines))

    def local_count(self, workers: list[WorkerRef]) -> int:
        """How many of `workers` are this app's local demo workers (they share its cores)."""
        local = {r.endpoint for r in self.cluster.refs} if self.cluster else set()
        return sum(1 for w in workers if w.endpoint in local)

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
        await self.stop_coordinator()
        self.realized = None
        self.serving_plan = self.plan
        self.coordinator_state = "preflight"
        self.set_coordinator_status(f"coordinator: checking the workers for {self.plan.summary()}")
        self.show_plan()
        self.run_coordinator(Prepared(self.model_path, self.info, self.plan, draft=self.draft))

    async def action_stop_coordinator(self) -> None:
        was = self.deployment.serving or self.coordinator_busy
        await self.stop_coordinator()
        if was:
            self.coordinator_state = "stopped"
            self.set_coordinator_status()

    async def stop_coordinator(self, quitting: bool = False) -> None:
        self.workers.cancel_group(self, "coordinator")
        await self.deployment.stop_coordinator()
        self.workers_in_use = set()
        self.url = None
        if not quitting:
            self.set_chat_endpoint(None, "")

    @work(exclusive=True, group="coordinator", exit_on_error=False)
    async def run_coordinator(self, prepared: Prepared) -> None:
        workers = list(prepared.plan.workers)
        self.deployment.use_workers(workers, self.local_count(workers))
        self.workers_in_use = {w.endpoint for w in workers}
        try:
            await self.deployment.start(prepared)
        except QuorumError as exc:
            self.post_message(msg.CoordinatorStopped(prepared.plan, str(exc)))

    def deployed(self, event: DeployEvent) -> None:
        """The deployment's events, from the app's own event loop, as messages."""
        self.post_message(msg.Deployed(event))

    def on_deployed(self, message: msg.Deployed) -> None:
        event = message.event
        if isinstance(event, Loading):
            self.coordinator_state = "loading"
            self.set_coordinator_status(f"coordinator: loading {event.plan.summary()}")
            self.note(f"coordinator log: {event.log_path}")
            self.note(event.cpu)
        elif isinstance(event, Loaded):
            self.realized = list(event.realized)
            self.show_plan()
            self.note(f"loaded in {event.load_s:.1f}s: {event.plan.summary()}")
        elif isinstance(event, Serving):
            self.on_serving(event)
        elif isinstance(event, Stopped) and event.reason is not None:
            self.post_message(msg.CoordinatorStopped(event.plan, event.reason))
        elif isinstance(event, FailingOver):
            self.coordinator_state = "failing over"
            self.set_coordinator_status(
                Text.assemble(("◆ failing over: ", "bold yellow"), event.reason)
            )
            self.report("failover", event.reason)
            self.restart_workers(list(event.dead))
        elif isinstance(event, FailedOver):
            self.plan = self.serving_plan = event.plan
            self.note(
                f"failed over in {event.seconds:.1f}s: {event.before.summary()} -> "
                f"{event.plan.summary()}"
            )
        elif isinstance(event, WorkerBack):
            self.workers_back.add(event.worker.name)
            self.note(f"worker {event.worker.name} ({event.worker.endpoint}) is back")
            self.notify(
                f"worker {event.worker.name} is back: press ctrl+r to use it again",
                title="rejoin",
                timeout=30,
            )

    @work(group="restart", exit_on_error=False)
    async def restart_workers(self, dead: list[WorkerRef]) -> None:
        """Start the workers a failover lost again, on their endpoints: local demo workers
        here, SSH hosts' through their kept connections."""
        for worker in dead:
            local = None
            if self.cluster is not None:
                local = next((w for w in self.cluster.workers if w.ref == worker), None)
            try:
                if local is not None and self.cluster is not None:
                    again = await asyncio.to_thread(self.cluster.restart, local)
                    self.pids[again.name] = again.process.pid
                elif worker.name in self.ssh_host_names():
                    await self.ssh.bring_back(
                        worker.name, self.host_event_callback, self.ask_host_key
                    )
                else:
                    continue
            except QuorumError as exc:
                self.post_message(msg.Failed(f"worker {worker.name}", str(exc)))
                continue
            self.post_message(msg.Note(f"worker {worker.name} restarted at {worker.endpoint}"))

    async def action_rejoin(self) -> None:
        away = {w.name for w in self.deployment.away}
        if not away:
            self.notify("no worker is waiting to rejoin", severity="warning")
            return
        if not away <= self.workers_back:
            missing = ", ".join(sorted(away - self.workers_back))
            self.notify(f"{missing} does not answer yet", severity="warning")
            return
        self.workers_back.clear()
        self.notify(f"using {', '.join(w.name for w in self.deployment.away)} again")
        try:
            await self.deployment.rejoin()
        except QuorumError as exc:
            self.report("rejoin", str(exc))

    def on_serving(self, event: Serving) -> None:
        self.coordinator_state = "serving"
        self.url = event.url
        plan = self.plan = self.serving_plan = event.plan
        coordinator = self.deployment.coordinator
        cpu = coordinator.cpu.summary() if coordinator and coordinator.cpu else ""
        self.set_coordinator_status(
            Text.assemble(
                ("● ready: ", "bold green"),
                f"serving {plan.summary()} at {event.url}",
                (f"\n{cpu}" if cpu else "", "dim"),
            )
        )
        self.note(f"coordinator ready at {self.url}")
        self.set_chat_endpoint(self.url, plan.summary())
        self.hosts[0].state = "serving"
        self.show_hosts()
        if self.setup.demo_workers and not self.demo_chatted:
            self.demo_chatted = True
            self.action_tab("chat")

    def on_coordinator_stopped(self, message: msg.CoordinatorStopped) -> None:
        self.workers_in_use = set()
        self.coordinator_state = "error"
        self.url = None
        self.set_chat_endpoint(None, message.plan.summary())
        self.query_one(ChatPane).report_error(f"The coordinator stopped: {message.reason}")
        self.set_coordinator_status(
            Text.assemble(("✖ coordinator stopped: ", "bold red"), message.reason)
        )
        self.hosts[0].state = "error"
        self.show_hosts()
        self.report("coordinator", message.reason)

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
        if self.cluster is not None:
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
            cluster = await start_local_workers(count)
        except QuorumError as exc:
            self.post_message(msg.Failed("demo cluster", str(exc)))
            return
        self.cluster = cluster
        pids = {w.name: w.process.pid for w in cluster.workers}
        self.post_message(msg.DemoStarted(cluster.refs, pids))

    def on_demo_started(self, message: msg.DemoStarted) -> None:
        self.pids.update(message.pids)
        self.worker_refs = [*message.workers, *self.ssh.workers()]
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
        if self.cluster is None or self.info is None or self.demo_applied or self.plan is None:
            return
        if {w.endpoint for w in self.plan.workers} != {r.endpoint for r in self.cluster.refs}:
            return
        self.demo_applied = True
        self.call_later(self.action_apply)

    def action_refresh(self) -> None:
        if self.setup.live:
            self.sample_hosts()
            if self.ssh.up:
                self.sample_ssh_hosts()

    @work(thread=True, exclusive=True, group="sample", exit_on_error=False)
    def sample_hosts(self) -> None:
        samples = []
        for host in list(self.hosts):
            sample = msg.Sample(host.name, host.endpoint)
            if host.address == COORDINATOR_HOST:
                sample.cpu, sample.used, sample.total = self._sampler.machine()
            else:
                pid = self.pids.get(host.name)
                if pid is not None:
                    measured = self._sampler.process(pid)
                    if measured is None:
                        sample.state, sample.reason = "down", "the worker process exited"
                    else:
                        sample.cpu, sample.used = measured
                        sample.total = self._sampler.total_memory()
                if sample.state is None and host.endpoint in self.workers_in_use:
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
        if self.plan is not None and self.coordinator_state not in ("loading", "preflight"):
            self.show_plan()

    # ----- shutdown

    async def action_quit(self) -> None:
        await self.stop_coordinator(quitting=True)
        await self.deployment.close()
        self.stop_cluster()
        await self.ssh.close()
        self.exit()

    def stop_cluster(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.stop()

    async def on_unmount(self) -> None:
        await self.stop_coordinator(quitting=True)
        await self.deployment.close()
        self.stop_cluster()
        await self.ssh.close()
        thaw_heap()


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
