"""The SSH cluster as the app drives it: the cluster file, bring-up per host, kept tunnels.

No Textual here: the app passes callbacks for host events and host-key questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorum_tui.cluster import bringup, inventory
from quorum_tui.cluster.bringup import BringUpOptions, Cluster, HostResult
from quorum_tui.cluster.events import EventCallback, HostKeyPrompt
from quorum_tui.cluster.inventory import HostConfig, Inventory
from quorum_tui.cluster.telemetry import HostSample, sample_all
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.errors import QuorumError

FORM_KEYS = ("name", "address", "user", "port", "rpc_port", "transport")


def host_from_form(values: dict[str, str]) -> HostConfig:
    """A HostConfig from the host form's text fields; bad values raise QuorumError."""
    name, address = values.get("name", "").strip(), values.get("address", "").strip()
    if not name or not address:
        raise QuorumError("a host needs a name and an address")
    numbers: dict[str, Any] = {}
    for key in ("port", "rpc_port"):
        text = values.get(key, "").strip()
        if text:
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise QuorumError(f"{key.replace('_', ' ')} {text!r}: give a port from 1 to 65535")
            numbers[key] = int(text)
    transport = values.get("transport", "").strip() or "tunnel"
    if transport not in inventory.TRANSPORTS:
        raise QuorumError(f"transport {transport!r}: use {' or '.join(inventory.TRANSPORTS)}")
    return HostConfig(
        name=name,
        address=address,
        user=values.get("user", "").strip() or None,
        port=numbers.get("port"),
        rpc_port=numbers.get("rpc_port", inventory.DEFAULT_RPC_PORT),
        transport=transport,
    )


def form_from_host(host: HostConfig) -> dict[str, str]:
    return {
        "name": host.name,
        "address": host.address,
        "user": host.user or "",
        "port": str(host.port or ""),
        "rpc_port": str(host.rpc_port),
        "transport": host.transport,
    }


@dataclass
class SshHosts:
    """The cluster file and the hosts brought up from it (their tunnels stay open here)."""

    path: Path | None = None
    inventory: Inventory | None = None
    up: dict[str, tuple[Cluster, HostResult]] = field(default_factory=dict)

    def load(self) -> Inventory:
        self.inventory = inventory.load_inventory(self.path, missing_ok=True)
        return self.inventory

    @property
    def hosts(self) -> list[HostConfig]:
        return list(self.inventory.hosts) if self.inventory else []

    def add(self, values: dict[str, str]) -> Inventory:
        self.inventory = inventory.add_host(self.path, host_from_form(values))
        return self.inventory

    def update(self, name: str, values: dict[str, str]) -> Inventory:
        """Edit a host; a new name is a remove and an add."""
        host = host_from_form(values)
        if host.name != name:
            self.inventory = inventory.add_host(self.path, host)
            self.inventory = inventory.remove_host(self.path, name)
            return self.inventory
        changes = {k: getattr(host, k) for k in FORM_KEYS if k != "name"}
        self.inventory = inventory.update_host(self.path, name, **changes)
        return self.inventory

    def remove(self, name: str) -> Inventory:
        self.inventory = inventory.remove_host(self.path, name)
        return self.inventory

    def workers(self) -> list[WorkerRef]:
        """The workers that are up, in file order."""
        return [self.up[h.name][1].ref for h in self.hosts if h.name in self.up]

    async def run(
        self,
        stage: str,
        names: Sequence[str] | None,
        on_event: EventCallback,
        prompt: HostKeyPrompt,
    ) -> list[HostResult]:
        """`up`, `check` or `down` for some hosts (all when None); keeps what came up."""
        inv = self.load()
        options = BringUpOptions(prompt=prompt, on_event=on_event)
        targets = list(names) if names else [h.name for h in inv.hosts]
        for name in targets:
            await self.forget(name)
        action = {"up": bringup.bring_up, "check": bringup.check, "down": bringup.down}[stage]
        cluster = await action(inv, options, targets)
        for result in cluster.results:
            if stage == "up" and result.ok:
                self.up[result.host.name] = (cluster, result)
        if stage != "up":
            await cluster.close()
        return cluster.results

    async def bring_back(
        self, name: str, on_event: EventCallback, prompt: HostKeyPrompt
    ) -> HostResult | None:
        """Restart `name`'s worker if it died, on the same endpoint (None: not up here)."""
        kept = self.up.get(name)
        if kept is None:
            return None
        cluster, result = kept
        index = cluster.results.index(result)
        options = BringUpOptions(prompt=prompt, on_event=on_event)
        again = await bringup.bring_back(cluster, index, options, "its worker died", prompt)
        if again.ok:
            self.up[name] = (cluster, again)
        return again

    async def forget(self, name: str) -> None:
        """Close the tunnel and SSH connection kept for `name` (its worker keeps running)."""
        kept = self.up.pop(name, None)
        if kept is None:
            return
        _, result = kept
        if result.tunnel is not None:
            result.tunnel.close()
            result.tunnel = None
        if result.session is not None:
            await result.session.close()
            result.session = None

    async def sample(self) -> list[HostSample]:
        sessions = [r.session for _, r in self.up.values() if r.session is not None]
        return await sample_all(sessions, local=False) if sessions else []

    async def close(self) -> None:
        for name in list(self.up):
            await self.forget(name)
