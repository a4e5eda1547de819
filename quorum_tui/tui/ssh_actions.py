"""The Cluster tab's SSH actions: host form, connect, bring up, stop, host-key questions."""

from __future__ import annotations

import asyncio
from typing import Any

from textual import work
from textual.message import Message

from quorum_tui.cluster.events import FAILED_STATES, HostEvent, HostKeyQuestion
from quorum_tui.errors import QuorumError
from quorum_tui.tui.appbase import AppBase
from quorum_tui.tui.cluster_pane import ClusterPane
from quorum_tui.tui.dialogs import ConfirmDialog, HostForm, host_key_dialog
from quorum_tui.tui.hosts import COORDINATOR_HOST, HostStatus
from quorum_tui.tui.sshhosts import form_from_host, host_from_form

STAGE_WORDS = {"up": "bringing up", "check": "connecting to", "down": "stopping"}


class HostEventMessage(Message):
    def __init__(self, event: HostEvent) -> None:
        super().__init__()
        self.event = event


class InventoryLoaded(Message):
    def __init__(self, hosts: list[Any], error: str | None = None) -> None:
        super().__init__()
        self.hosts, self.error = hosts, error


class SshDone(Message):
    """A bring-up, check or stop ended; the workers that are up may have changed."""


def form_problem(values: dict[str, str]) -> str | None:
    try:
        host_from_form(values)
    except QuorumError as exc:
        return str(exc)
    return None


class SshActions(AppBase):
    """QuorumApp's Cluster tab over SSH."""

    def ssh_host_names(self) -> set[str]:
        return {h.name for h in self.ssh.hosts}

    def selected_ssh_host(self) -> str | None:
        name = self.query_one(ClusterPane).selected_name()
        if name in self.ssh_host_names():
            return name
        if name == "coordinator" or name is None:
            self.notify("select a host of the cluster file first", severity="warning")
        else:
            self.notify(f"{name} is a local demo worker, not a host of the cluster file",
                        severity="warning")  # fmt: skip
        return None

    @work(thread=True, exclusive=True, group="inventory", exit_on_error=False)
    def load_inventory(self) -> None:
        try:
            inv = self.ssh.load()
        except QuorumError as exc:
            self.post_message(InventoryLoaded([], str(exc)))
            return
        self.post_message(InventoryLoaded(list(inv.hosts)))

    def on_inventory_loaded(self, message: InventoryLoaded) -> None:
        if message.error:
            self.report("cluster file", message.error)
            return
        known = {h.name: h for h in self.hosts}
        rows = [self.hosts[0]]
        demo = {r.name for r in self.demo_refs()}
        rows += [h for h in self.hosts[1:] if h.name in demo]
        for config in message.hosts:
            row = known.get(config.name) or HostStatus(config.name, config.address)
            row.address = config.address
            rows.append(row)
        self.hosts = rows
        self.show_hosts()

    def action_add_host(self) -> None:
        def saved(values: dict[str, str] | None) -> None:
            if values is not None:
                self.edit_inventory("add", None, values)

        self.push_screen(HostForm("Add a host", None, form_problem), saved)

    def action_edit_host(self) -> None:
        name = self.selected_ssh_host()
        if name is None:
            return
        config = next(h for h in self.ssh.hosts if h.name == name)

        def saved(values: dict[str, str] | None) -> None:
            if values is not None:
                self.edit_inventory("edit", name, values)

        self.push_screen(HostForm(f"Edit {name}", form_from_host(config), form_problem), saved)

    def action_remove_host(self) -> None:
        name = self.selected_ssh_host()
        if name is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.edit_inventory("remove", name, {})

        question = f"Remove {name} from the cluster file? Its worker, if running, keeps running."
        self.push_screen(ConfirmDialog("Remove a host", question, "Remove", "Keep"), answer)

    @work(thread=True, exclusive=True, group="inventory", exit_on_error=False)
    def edit_inventory(self, what: str, name: str | None, values: dict[str, str]) -> None:
        try:
            if what == "add":
                inv = self.ssh.add(values)
            elif what == "edit" and name is not None:
                inv = self.ssh.update(name, values)
            elif name is not None:
                inv = self.ssh.remove(name)
            else:
                return
        except QuorumError as exc:
            self.post_message(InventoryLoaded([], str(exc)))
            return
        self.post_message(InventoryLoaded(list(inv.hosts)))

    def action_connect_host(self) -> None:
        name = self.selected_ssh_host()
        if name:
            self.run_ssh("check", [name])

    def action_bring_up(self) -> None:
        name = self.selected_ssh_host()
        if name:
            self.run_ssh("up", [name])

    def action_bring_up_all(self) -> None:
        if self.ssh.hosts:
            self.run_ssh("up", None)
        else:
            self.notify("no hosts in the cluster file: add one with n", severity="warning")

    def action_stop_host(self) -> None:
        name = self.selected_ssh_host()
        if name:
            self.run_ssh("down", [name])

    def action_stop_all(self) -> None:
        if self.ssh.hosts:
            self.run_ssh("down", None)

    @work(group="ssh", exit_on_error=False)
    async def run_ssh(self, stage: str, names: list[str] | None) -> None:
        self.note(f"{STAGE_WORDS[stage]} {', '.join(names or ['every host'])}")
        try:
            results = await self.ssh.run(stage, names, self.host_event_callback, self.ask_host_key)
        except QuorumError as exc:
            self.report("cluster", str(exc))
            return
        for result in results:
            row = next((h for h in self.hosts if h.name == result.host.name), None)
            if row is not None:
                row.endpoint = result.endpoint if result.ok and stage == "up" else None
                if not row.endpoint:
                    row.free = row.rtt_ms = None
        self.post_message(SshDone())

    def host_event_callback(self, event: HostEvent) -> None:
        self.post_message(HostEventMessage(event))

    def on_host_event_message(self, message: HostEventMessage) -> None:
        event = message.event
        if event.line is not None:
            self.note(f"{event.host}: {event.line}")
            return
        row = next((h for h in self.hosts if h.name == event.host), None)
        if row is not None:
            row.state, row.reason = event.state, event.reason
            self.show_hosts()
        if event.state in FAILED_STATES and "no worker running" not in event.reason:
            self.report(f"host {event.host}", f"{event.state}: {event.reason}")
        else:
            self.note(f"{event.host}: {event.state}: {event.reason}")

    def on_ssh_done(self, message: SshDone) -> None:
        plan = self.plan
        if plan is None or list(plan.workers) != self.worker_refs:
            self.replan()
        self.show_hosts()
        self.action_refresh()

    async def ask_host_key(self, question: HostKeyQuestion) -> bool:
        """Ask the user whether to trust an unknown host key (the dialog answers)."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(yes: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(yes))

        where = f"{question.host} ({question.address}:{question.port})"
        self.push_screen(host_key_dialog(where, question.algorithm, question.fingerprint), done)
        return await answer

    @work(group="ssh-sample", exclusive=True, exit_on_error=False)
    async def sample_ssh_hosts(self) -> None:
        from quorum_tui.tui.messages import HostsSampled, Sample

        samples = await self.ssh.sample()
        out = []
        for s in samples:
            if s.error:
                out.append(Sample(s.host, reason=s.error))
            else:
                out.append(Sample(s.host, cpu=s.cpu_percent, used=s.mem_used, total=s.mem_total))
        if out:
            self.post_message(HostsSampled(out, None))

    def is_ssh_row(self, host: HostStatus) -> bool:
        return host.address != COORDINATOR_HOST and host.name in self.ssh_host_names()
