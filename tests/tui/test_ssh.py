"""The Cluster tab over SSH: the host form edits the cluster file; real sshd for the rest.

A Button ignores a second press within its 0.2 s active effect, hence the pauses in `fill`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.deploy.events import Phase
from quorum_tui.lab.sshlab import SshLab
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.cluster_pane import ClusterPane
from quorum_tui.tui.dialogs import ConfirmDialog, HostForm
from quorum_tui.tui.session import Setup
from tests.tui.helpers import wait_until


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[SshLab]:
    lab = SshLab(tmp_path / "lab", tmp_path / "remote-cache")
    try:
        yield lab
    finally:
        lab.close()


def host_names(app: QuorumApp) -> list[str]:
    table = app.query_one("#hosts", DataTable)
    return [str(key.value) for key in table.rows]


async def fill(app: QuorumApp, pilot, values: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    for key, value in values.items():
        app.screen.query_one(f"#field-{key}", Input).value = value
    await pilot.pause(0.3)


async def test_host_form_adds_edits_and_removes(quorum_dirs: dict[str, Path]) -> None:
    cluster_file = quorum_dirs["config"] / "cluster.toml"
    app = QuorumApp(Setup())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("1", "n")
        await wait_until(pilot, lambda: isinstance(app.screen, HostForm))
        await fill(app, pilot, {"name": "gpu-a", "address": "192.0.2.10", "port": "abc"})
        await pilot.click("#save")
        assert isinstance(app.screen, HostForm), "a bad port keeps the form open"
        assert "port" in str(app.screen.query_one("#form-error", Static).render())
        await fill(app, pilot, {"port": "2222", "rpc_port": "50060"})
        await pilot.click("#save")
        await wait_until(pilot, lambda: "gpu-a" in host_names(app))
        (host,) = load_inventory(cluster_file).hosts
        assert (host.address, host.port, host.rpc_port) == ("192.0.2.10", 2222, 50060)

        app.query_one("#hosts", DataTable).move_cursor(row=1)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, HostForm))
        assert app.screen.query_one("#field-address", Input).value == "192.0.2.10"
        await fill(app, pilot, {"address": "192.0.2.11", "transport": "carrier-pigeon"})
        await pilot.click("#save")
        assert "transport" in str(app.screen.query_one("#form-error", Static).render())
        await fill(app, pilot, {"transport": "direct"})
        await pilot.click("#save")
        await wait_until(pilot, lambda: app.hosts[1].address == "192.0.2.11")
        (host,) = load_inventory(cluster_file).hosts
        assert (host.address, host.transport) == ("192.0.2.11", "direct")

        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("n")
        assert load_inventory(cluster_file).hosts
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_until(pilot, lambda: host_names(app) == ["coordinator"])
        assert load_inventory(cluster_file).hosts == []


async def test_host_actions_need_a_cluster_host() -> None:
    app = QuorumApp(Setup())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("1", "b")
        await pilot.pause()
        assert app.query_one(ClusterPane).selected_name() == "coordinator"
        assert not isinstance(app.screen, HostForm | ConfirmDialog)
        await pilot.press("B")
        await pilot.pause()
        assert len(app.hosts) == 1


async def test_bad_cluster_file_is_reported(quorum_dirs: dict[str, Path]) -> None:
    (quorum_dirs["config"] / "cluster.toml").write_text("[[hosts]]\nname = 3\n")
    app = QuorumApp(Setup())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: bool(app.errors))
        assert "cluster.toml" in app.errors[0]
        assert app.is_running


@pytest.mark.slow
async def test_unknown_host_key_is_asked_in_a_dialog(lab: SshLab) -> None:
    host = lab.add("fresh", known=False)
    app = QuorumApp(Setup(cluster_file=lab.cluster_file([host])))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "fresh" in host_names(app))
        app.query_one("#hosts", DataTable).move_cursor(row=1)
        await pilot.pause()
        assert app.query_one(ClusterPane).selected_name() == "fresh"
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), timeout=30)
        assert "SHA256:" in str(app.screen.query_one(".dialog-body", Static).render())
        await pilot.press("n")
        await wait_until(pilot, lambda: app.hosts[1].state == "host-key-unknown", timeout=30)
        assert any("host fresh" in e for e in app.errors)
        assert lab.known_hosts.read_text() == ""

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), timeout=30)
        await pilot.press("y")
        await wait_until(pilot, lambda: app.hosts[1].state == "worker-down", timeout=60)
        assert "no worker running" in app.hosts[1].reason
        assert lab.known_hosts.read_text().split()[1:] == host.known_hosts_line().split()[1:]


@pytest.mark.slow
async def test_bring_up_apply_and_stop_over_ssh(lab: SshLab, tiny_model: Path) -> None:
    host = lab.add("lab1")
    app = QuorumApp(Setup(model=str(tiny_model), cluster_file=lab.cluster_file([host])))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "lab1" in host_names(app))
        await pilot.press("B")
        await wait_until(pilot, lambda: app.hosts[1].state in ("ok", "worker-down"), timeout=240)
        assert app.hosts[1].state == "ok", app.hosts[1].reason
        assert app.hosts[1].endpoint and app.hosts[1].endpoint.startswith("127.0.0.1:")
        await wait_until(pilot, lambda: app.plan is not None and len(app.plan.workers) == 1)
        assert app.plan is not None and app.plan.counts == (0, 5)
        await pilot.press("2", "a")
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        assert app.deployment.phase == Phase.SERVING, app.errors
        assert app.realized == [1, 1, 1, 1, 1, 1]
        await pilot.press("1", "S")
        await wait_until(pilot, lambda: app.hosts[1].endpoint is None, timeout=60)
        assert app.hosts[1].state == "worker-down"
        assert app.plan is not None and app.plan.counts == (5,)
