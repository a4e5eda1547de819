"""The layer map: dragging boundaries with the mouse, moving them with keys, wrapping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import DataTable

from quorum_tui.engine.plan import LayerPlan
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.layermap import LINES_PER_ROW, Geometry, LayerMap
from tests.tui.helpers import fixed_setup, wait_until


async def open_layers(pilot, app: QuorumApp) -> LayerMap:  # type: ignore[no-untyped-def]
    await wait_until(pilot, lambda: app.plan is not None)
    await pilot.press("2")
    await pilot.pause()
    return app.query_one(LayerMap)


def test_geometry_one_row_and_wrapped() -> None:
    one = Geometry.fit(8, 81)
    assert (one.cell, one.per_row, one.rows) == (10, 8, 1)
    assert one.edge(3) == (30, 0)
    assert one.edge(8) == (80, 0)
    assert one.layer_at(30, 1) == 3
    assert one.layer_at(34, 0) == 3
    assert one.layer_at(36, 0) == 4
    assert one.layer_at(-5, 0) == 0
    assert one.layer_at(500, 0) == 8
    deep = Geometry.fit(100, 61)
    assert (deep.cell, deep.per_row, deep.rows) == (2, 30, 4)
    assert deep.edge(31) == (2, LINES_PER_ROW)
    assert deep.edge(100) == (20, 3 * LINES_PER_ROW)
    assert deep.layer_at(2, LINES_PER_ROW + 1) == 31
    assert deep.layer_at(0, 99) == 90


async def test_drag_boundary_moves_layers(tiny_model: Path) -> None:
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        layer_map = await open_layers(pilot, app)
        assert app.plan is not None and app.plan.counts == (0, 3, 2)
        geo = layer_map.geometry
        x3, y = geo.edge(3)
        x1, _ = geo.edge(1)
        await pilot.mouse_down(layer_map, offset=(x3, y))
        await pilot.hover(layer_map, offset=(x1 + geo.cell, y))
        await pilot.hover(layer_map, offset=(x1, y))
        assert app.plan.counts == (0, 3, 2), "the app's plan changes on mouse-up only"
        await pilot.mouse_up(layer_map, offset=(x1, y))
        await pilot.pause()
        assert app.plan.counts == (0, 1, 4)
        assert layer_map.plan == app.plan
        x5, _ = geo.edge(5)
        await pilot.mouse_down(layer_map, offset=(x1, y))
        await pilot.hover(layer_map, offset=(x5, y))
        await pilot.mouse_up(layer_map, offset=(x5 + 3, y))
        await pilot.pause()
        assert app.plan.counts == (0, 5, 0)
        assert app.plan.output_stage == 1


async def test_drag_splits_coincident_boundaries_by_direction(tiny_model: Path) -> None:
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        layer_map = await open_layers(pilot, app)
        start = LayerPlan.from_counts(5, [2, 0, 3], list(app.plan.workers))  # type: ignore[union-attr]
        app.plan = start
        app.show_plan()
        await pilot.pause()
        geo = layer_map.geometry
        x2, y = geo.edge(2)
        await pilot.mouse_down(layer_map, offset=(x2, y))
        await pilot.hover(layer_map, offset=(geo.edge(4)[0], y))
        await pilot.mouse_up(layer_map, offset=(geo.edge(4)[0], y))
        await pilot.pause()
        assert app.plan.counts == (2, 2, 1)
        app.plan = start
        app.show_plan()
        await pilot.pause()
        await pilot.mouse_down(layer_map, offset=(x2, y))
        await pilot.hover(layer_map, offset=(0, y))
        await pilot.mouse_up(layer_map, offset=(0, y))
        await pilot.pause()
        assert app.plan.counts == (0, 2, 3)


async def test_click_away_from_a_boundary_changes_nothing(tiny_model: Path) -> None:
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        layer_map = await open_layers(pilot, app)
        geo = layer_map.geometry
        middle = geo.edge(1)[0] + geo.cell // 2
        await pilot.mouse_down(layer_map, offset=(middle, 0))
        await pilot.hover(layer_map, offset=(geo.edge(4)[0], 0))
        await pilot.mouse_up(layer_map, offset=(geo.edge(4)[0], 0))
        await pilot.pause()
        assert app.plan is not None and app.plan.counts == (0, 3, 2)
        assert layer_map._drag is None


async def test_keys_move_the_selected_boundary(make_model: Callable[..., Path]) -> None:
    app = QuorumApp(fixed_setup(make_model(n_layers=24)))
    async with app.run_test(size=(80, 24)) as pilot:
        layer_map = await open_layers(pilot, app)
        assert app.focused is layer_map
        assert app.plan is not None and app.plan.counts == (0, 12, 12)
        await pilot.press("right")
        assert app.plan.counts == (1, 11, 12)
        await pilot.press("]", "left", "left")
        assert app.plan.counts == (1, 9, 14)
        await pilot.press("shift+right")
        assert app.plan.counts == (1, 19, 4)
        await pilot.press("shift+right")
        assert app.plan.counts == (1, 23, 0), "clamped: a stage never goes below zero"
        await pilot.press("[", "shift+left", "shift+left")
        assert app.plan.counts == (0, 24, 0)
        await pilot.press("u")
        assert app.plan.counts == (0, 12, 12), "Auto restores the proposal"


async def test_swap_workers_keeps_counts(tiny_model: Path) -> None:
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_layers(pilot, app)
        await pilot.press("right", "w")
        assert app.plan is not None
        assert [w.name for w in app.plan.workers] == ["gpu-b", "gpu-a"]
        assert app.plan.counts == (1, 2, 2)


async def test_deep_model_wraps_and_drags_on_a_later_row(make_model: Callable[..., Path]) -> None:
    app = QuorumApp(fixed_setup(make_model(n_layers=96)))
    async with app.run_test(size=(80, 30)) as pilot:
        layer_map = await open_layers(pilot, app)
        geo = layer_map.geometry
        assert geo.rows > 1
        assert layer_map.size.height == geo.rows * LINES_PER_ROW
        x, y = geo.edge(48)
        assert y > 0
        target = geo.edge(60)
        await pilot.mouse_down(layer_map, offset=(x, y))
        await pilot.hover(layer_map, offset=target)
        await pilot.mouse_up(layer_map, offset=target)
        await pilot.pause()
        assert app.plan is not None and app.plan.counts == (0, 60, 36)


async def test_keymap_file_remaps_a_binding(tiny_model: Path, quorum_dirs: dict[str, Path]) -> None:
    (quorum_dirs["config"] / "keymap.toml").write_text(
        '[keymap]\n"quorum.layers.right" = "l"\n"quorum.tab.layers" = "f9"\n'
    )
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None)
        await pilot.press("f9")
        await pilot.pause()
        assert app.query_one(LayerMap).has_focus
        await pilot.press("l")
        assert app.plan is not None and app.plan.counts == (1, 2, 2)
        assert app.errors == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[keymap\n", "cannot read the keymap"), ('"quorum.apply" = 3\n', "give the keys as a string"),
     ('"quorum.nope" = "x"\n', "no binding has the id quorum.nope")],
)  # fmt: skip
async def test_bad_keymap_is_reported_and_the_app_runs(
    tiny_model: Path, quorum_dirs: dict[str, Path], text: str, problem: str
) -> None:
    (quorum_dirs["config"] / "keymap.toml").write_text(text)
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.plan is not None)
        assert any(problem in e for e in app.errors), app.errors
        await pilot.press("2", "right")
        assert app.plan is not None and app.plan.counts == (1, 2, 2)


async def test_a_stage_that_does_not_fit_is_red(tiny_model: Path) -> None:
    setup = fixed_setup(tiny_model)
    setup.local_free = 1024
    app = QuorumApp(setup)
    async with app.run_test(size=(120, 40)) as pilot:
        layer_map = await open_layers(pilot, app)
        assert [fits for _, fits in layer_map.notes] == [False, True, None]
        table = app.query_one("#stages", DataTable)
        fits = [str(table.get_cell(key, "Fits")) for key in table.rows]
        assert fits == ["NO", "yes", "?"]
        await pilot.press("right", "right")
        assert app.plan is not None and app.plan.counts == (2, 1, 2)
        assert layer_map.notes[0][1] is False


async def test_the_real_model_s_30_layers(real_model_file: Path) -> None:
    app = QuorumApp(fixed_setup(real_model_file))
    async with app.run_test(size=(120, 40)) as pilot:
        layer_map = await open_layers(pilot, app)
        assert app.info is not None and app.info.n_layers == 30
        assert app.plan is not None and app.plan.counts == (0, 15, 15)
        geo = layer_map.geometry
        start, y = geo.edge(15)
        target = geo.edge(20)
        await pilot.mouse_down(layer_map, offset=(start, y))
        await pilot.hover(layer_map, offset=target)
        await pilot.mouse_up(layer_map, offset=target)
        await pilot.pause()
        assert app.plan.counts == (0, 20, 10)
        rows = app.query_one("#stages", DataTable)
        assert [str(rows.get_row_at(i)[2]) for i in range(3)] == ["-", "0-19", "20-29+out"]


async def test_the_cached_column_follows_the_plan(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quorum_tui.deploy.deployment import Deployment
    from quorum_tui.deploy.placement import CacheCoverage

    asked: list[list[str]] = []

    async def coverage(self: Deployment, info: object, workers: list) -> CacheCoverage:  # type: ignore[type-arg]
        asked.append([w.name for w in workers])
        return CacheCoverage((10,) * 6, {workers[0].endpoint: (10, 10, 5, 0, 0, 0)})

    monkeypatch.setattr(Deployment, "cache_coverage", coverage)
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_layers(pilot, app)
        table = app.query_one("#stages", DataTable)

        def cached() -> list[str]:
            return [str(table.get_cell(key, "Cached")) for key in table.rows]

        await wait_until(pilot, lambda: cached() == ["-", "83%", "?"])
        assert asked and asked[-1] == [w.name for w in app.worker_refs]
        await pilot.press("right")
        assert app.plan is not None and app.plan.counts == (1, 2, 2)
        assert cached() == ["-", "75%", "?"], "recomputed for the new range, not asked again"
