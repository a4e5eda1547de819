"""First run: the app offers the local demo cluster; Auto measures once, then restores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.widgets import Static, TabbedContent

from quorum_tui.deploy.events import Phase
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.dialogs import ConfirmDialog
from quorum_tui.tui.session import Setup
from tests.tui.helpers import wait_until


async def test_declining_the_demo_leaves_an_empty_cluster() -> None:
    app = QuorumApp(Setup(offer_demo=True))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        body = str(app.screen.query_one(".dialog-body", Static).render())
        assert "SmolLM2-135M-Instruct" in body and "fits on one machine" in body
        await pilot.press("n")
        await pilot.pause()
        assert app.deployment.pool.refs == [] and len(app.hosts) == 1


@pytest.mark.slow
async def test_accepting_the_demo_starts_workers_that_stop_with_the_app() -> None:
    app = QuorumApp(Setup(offer_demo=True))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        assert app.deployment.phase == Phase.SERVING, app.errors
        assert app.info is not None and app.info.n_layers == 30
        assert app.plan is not None and len(app.plan.workers) == 2
        assert app.query_one(TabbedContent).active == "chat"
        pids = list(app.local_pids().values())
        assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
async def test_auto_measures_once_then_restores(
    tiny_model: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(2)
    app = QuorumApp(Setup(model=str(tiny_model), workers=local_cluster.refs))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None)
        await pilot.press("2", "u")
        await pilot.pause()
        assert "measuring" in str(app.query_one("#coordinator-status", Static).render())
        await pilot.press("a")
        assert app.deployment.coordinator is None, "no Apply while Auto measures the workers"
        await wait_until(pilot, lambda: app.auto_plans, timeout=120)
        auto = app.plan
        assert auto is not None and auto == next(iter(app.auto_plans.values()))
        assert "predicted" in str(app.query_one("#coordinator-status", Static).render())
        app.plan = LayerPlan.from_counts(5, [1, 2, 2], local_cluster.refs)
        app.show_plan()
        await pilot.press("u")
        assert app.plan == auto, "restored without measuring again"
        assert not app.measuring
