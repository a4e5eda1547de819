"""What the app's action groups (SSH hosts, models) need from the app itself."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from quorum_tui.deploy.deployment import Deployment
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.tui.hosts import HostStatus
from quorum_tui.tui.session import Setup
from quorum_tui.tui.sshhosts import SshHosts


class AppBase(App[None]):
    """The state and the helpers QuorumApp provides to its action groups."""

    setup: Setup
    deployment: Deployment
    ssh: SshHosts
    hosts: list[HostStatus]
    plan: LayerPlan | None
    info: ModelInfo | None
    model_path: Path | None
    local_free_bytes: int | None

    @property
    def worker_refs(self) -> list[WorkerRef]:
        raise NotImplementedError

    def demo_refs(self) -> list[WorkerRef]:
        raise NotImplementedError

    def report(self, what: str, reason: str) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        raise NotImplementedError

    def show_hosts(self) -> None:
        raise NotImplementedError

    def replan(self) -> None:
        raise NotImplementedError

    def action_refresh(self) -> None:
        raise NotImplementedError

    def demo_ready(self) -> None:
        raise NotImplementedError
