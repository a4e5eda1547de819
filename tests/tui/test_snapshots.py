"""Every screen at 80x24 and 120x40, from a fixed app description (no live probes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from quorum_tui.tui.app import QuorumApp
from tests.tui.helpers import fixed_setup, settle

SIZES = [(80, 24), (120, 40)]
SCREENS = {"cluster": ["1"], "layers": ["2", "]"], "models": ["3"], "chat": ["4"], "help": ["?"]}


def before(keys: list[str]) -> Callable[[Pilot[None]], Any]:
    async def run(pilot: Pilot[None]) -> None:
        await settle(pilot)
        for field in pilot.app.query(Input):
            field.cursor_blink = False
        await pilot.press(*keys)
        await settle(pilot)

    return run


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(
    snap_compare: Callable[..., bool], make_model: Callable[..., Path], screen: str,
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("QUORUM_CONFIG_DIR", "/quorum-config")
    app = QuorumApp(fixed_setup(make_model(n_layers=12)))
    assert snap_compare(app, terminal_size=size, run_before=before(SCREENS[screen]))
