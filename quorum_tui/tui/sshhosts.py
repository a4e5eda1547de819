"""The SSH cluster as the app drives it: the cluster file, bring-up per host, kept tunnels.

No Textual here: the app passes callbacks for host events and host-key questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum_tui.cluster import bringup, inventory
from quorum_tui.cluster.bringup import BringUpOptions, HostResult
from quorum_tui.cluster.events import EventCallback, HostKeyPrompt
from quorum_tui.cluster.inventory import HostConfig, Inventory
from quorum_tui.cluster.telemetry import HostSample, sample_all
from quorum_tui.deploy.pool import WorkerPool
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
    """The cluster file, edited from the host form; bring-ups go to the deployment's worker
    pool, which keeps the hosts' tunnels and restarts their workers."""

    pool: WorkerPool
    path: Path | None = None
    inventory: Inventory | None = None

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

    @property
    def up(self) -> list[HostResult]:
        """The cluster file's hosts the pool holds, as they last came up."""
        names = {h.name for h in self.hosts}
        return [r for r in self.pool.host_results() if r.ok and r.host.name in names]

    async def run(
        self,
        stage: str,
        names: Sequence[str] | None,
        on_event: EventCallback,
        prompt: HostKeyPrompt,
    ) -> list[HostResult]:
        """`up`, `check` or `down` for some hosts (all when None)."""
        inv = self.load()
        options = BringUpOptions(prompt=prompt, on_event=on_event)
        targets = list(names) if names else [h.name for h in inv.hosts]
        if stage == "check":
            cluster = await bringup.check(inv, options, targets)
            await cluster.close()
            return cluster.results
        await self.pool.release(targets)
        if stage == "up":
            return (await self.pool.add_hosts(inv, options, targets)).results
        return (await bringup.down(inv, options, targets)).results

    async def sample(self) -> list[HostSample]:
        sessions = [r.session for r in self.up if r.session is not None]
        return await sample_all(sessions, local=False) if sessions else []
