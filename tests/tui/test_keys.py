"""`?` lists every key with its binding id; the command palette runs Quorum's commands."""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding
from textual.command import CommandPalette
from textual.widgets import DataTable, TabbedContent

from quorum_tui.tui.app import QuorumApp, binding_holders
from quorum_tui.tui.dialogs import HelpScreen
from tests.tui.helpers import fixed_setup, wait_until


def all_bindings() -> list[Binding]:
    return [b for h in binding_holders() for b in h.BINDINGS if isinstance(b, Binding)]


def test_every_binding_has_a_unique_id() -> None:
    ids = [b.id for b in all_bindings()]
    assert all(ids), [b.key for b in all_bindings() if not b.id]
    assert len(ids) == len(set(ids))


async def test_help_lists_every_binding_with_remapped_keys(
    tiny_model: Path, quorum_dirs: dict[str, Path]
) -> None:
    (quorum_dirs["config"] / "keymap.toml").write_text('"quorum.apply" = "f5"\n')
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        table = app.screen.query_one("#keys", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert {str(r[3]) for r in rows} == {b.id for b in all_bindings()}
        apply_row = next(r for r in rows if r[3] == "quorum.apply")
        assert str(apply_row[0]) == "f5"
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_palette_runs_a_quorum_command(tiny_model: Path) -> None:
    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"layer map")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.query_one(TabbedContent).active == "layers")


async def test_a_sample_taken_before_a_worker_changed_does_not_undo_the_change(
    tiny_model: Path,
) -> None:
    from quorum_tui.tui.messages import HostsSampled, Sample

    app = QuorumApp(fixed_setup(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        host = app.hosts[1]
        old = host.endpoint
        host.endpoint, host.state, host.reason = None, "worker-down", "stopped"
        app.post_message(HostsSampled([Sample(host.name, old, "serving", "in use")], None))
        await pilot.pause()
        assert (host.state, host.reason) == ("worker-down", "stopped")
        app.post_message(HostsSampled([Sample(host.name, None, "down", "gone", cpu=5.0)], None))
        await pilot.pause()
        assert (host.state, host.reason) == ("down", "gone")
