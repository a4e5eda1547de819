"""Apply on real local workers: a ready coordinator, the realized assignment, named failures."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from textual.widgets import DataTable, RichLog, Static, TabbedContent

from quorum_tui.deploy.events import Phase
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.chat import ChatPane
from quorum_tui.tui.cluster_pane import ClusterPane
from quorum_tui.tui.session import Setup
from tests.tui.helpers import wait_until

pytestmark = pytest.mark.slow


def status_text(app: QuorumApp) -> str:
    return str(app.query_one("#coordinator-status", Static).render())


def log_lines(app: QuorumApp) -> list[str]:
    return app.notes


def realized_column(app: QuorumApp) -> list[str]:
    table = app.query_one("#stages", DataTable)
    return [str(table.get_cell(key, "Realized")) for key in table.rows]


async def test_demo_apply_ready_then_a_dead_worker_is_named(tiny_model: Path) -> None:
    app = QuorumApp(Setup(model=str(tiny_model), demo_workers=2))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        assert app.deployment.phase == Phase.SERVING, "the demo applies its plan by itself"
        assert app.plan is not None and app.plan.counts == (0, 3, 2)
        assert app.query_one(TabbedContent).active == "chat"
        assert app.focused is not None and app.focused.id == "chat-input"
        local = app.deployment.pool.local
        assert local is not None
        pids = [w.process.pid for w in local.workers]
        await pilot.press("f2", "right", "a")
        await wait_until(pilot, lambda: app.realized == [0, 1, 1, 2, 2, 2])
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        assert app.deployment.phase == Phase.SERVING, app.errors
        assert app.plan is not None and app.plan.counts == (1, 2, 2)
        assert realized_column(app) == ["0", "1-2", "3-4+out"]
        assert "ready" in status_text(app)
        async with httpx.AsyncClient() as client:
            plan = (await client.get(app.url.removesuffix("/v1") + "/quorum/plan")).json()
        assert plan["realized"] == [0, 1, 1, 2, 2, 2]

        local.workers[1].kill(signal.SIGKILL)
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{app.url}/completions",
                json={"prompt": "hi", "max_tokens": 4, "temperature": 0},
                timeout=60,
            )
        assert reply.status_code == 200, reply.text
        [failover] = reply.json()["quorum"]["failovers"]
        assert (
            "worker w2" in failover["reason"]
            and failover["plan_after"] == "coordinator 0, w1 1-4+out"
        )
        assert [w.name for w in app.deployment.away] == ["w2"]
        killed = "worker w2: down: worker w2 was killed by SIGKILL"
        await wait_until(pilot, lambda: any(line.startswith(killed) for line in log_lines(app)))
        await wait_until(pilot, lambda: app.deployment.phase == Phase.SERVING)
        assert app.plan is not None and app.plan.counts == (1, 4)
        assert any("failover" in e and "worker w2" in e for e in app.errors)
        await wait_until(
            pilot,
            lambda: any("worker w2 (" in line and "is back" in line for line in log_lines(app)),
            timeout=60,
        )
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.plan is not None and app.plan.counts == (1, 2, 2))
        await wait_until(pilot, lambda: app.deployment.phase == Phase.SERVING)
        assert app.deployment.away == []
        pids += [w.process.pid for w in local.workers]
        await pilot.press("1")
        await pilot.pause()
        assert app.query_one(ClusterPane).display
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_apply_with_an_unreachable_worker_names_it(
    tiny_model: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(1)
    nobody = WorkerRef("ghost", f"127.0.0.1:{free_port()}")
    app = QuorumApp(Setup(model=str(tiny_model), workers=[*local_cluster.refs, nobody]))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None)
        await pilot.press("a")
        await wait_until(pilot, lambda: app.deployment.phase == Phase.FAILED)
        assert "worker ghost" in status_text(app)
        assert "unreachable" in status_text(app)
        await wait_until(pilot, lambda: app.hosts[2].state == "unreachable")
        assert app.hosts[1].state == "ok"
        await pilot.press("1", "l")
        log = app.query_one("#log", RichLog)
        assert log.display
        assert any("worker ghost" in line.text for line in log.lines)
        assert app.is_running


async def test_the_speculation_toggle_restarts_the_coordinator_with_it(
    tiny_model: Path, make_model: Callable[..., Path], local_cluster: LocalCluster
) -> None:
    local_cluster.start(1)
    draft = make_model(n_layers=2)
    settings = EngineSettings(draft=str(draft))
    app = QuorumApp(Setup(model=str(tiny_model), workers=local_cluster.refs, settings=settings))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None)
        await pilot.press("2", "g")
        assert app.deployment.settings.spec == "ngram"
        assert "speculation ngram" in str(app.query_one("#model-line", Static).render())
        await pilot.press("a")
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        coordinator = app.deployment.coordinator
        assert coordinator is not None and "--spec-type" in coordinator.argv, app.errors
        await pilot.press("g")
        await wait_until(pilot, lambda: app.draft is not None)
        assert app.deployment.settings.spec == "draft"
        assert draft.name in str(app.query_one("#model-line", Static).render())
        await pilot.press("a")
        await wait_until(pilot, lambda: app.deployment.phase == Phase.LOADING)
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        coordinator = app.deployment.coordinator
        assert coordinator is not None and str(draft) in coordinator.argv, app.errors
        await pilot.press("g")
        assert app.deployment.settings.spec == "off" and app.draft is None


async def test_llama_server_options_show_in_the_layers_and_name_the_chat_model(
    make_model: Callable[..., Path], local_cluster: LocalCluster
) -> None:
    local_cluster.start(1)
    model = make_model(n_layers=4, n_embd=128, n_head=2)
    settings = EngineSettings(server_args=("-ctk", "f32", "--alias", "mine"))
    app = QuorumApp(Setup(model=str(model), workers=local_cluster.refs, settings=settings))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None and app.info is not None)
        assert app.info is not None and app.info.kv_bytes_per_token_per_layer == 128 * 4 + 128 * 2
        assert "KV cache f32/f16" in str(app.query_one("#model-line", Static).render())
        await pilot.press("2", "a")
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        coordinator = app.deployment.coordinator
        assert coordinator is not None, app.errors
        assert coordinator.argv[-2:] == ["-ctk", "f32"]
        await wait_until(pilot, lambda: app.query_one(ChatPane).model == "mine")
