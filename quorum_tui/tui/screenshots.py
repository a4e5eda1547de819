"""SVGs of every screen of a live demo session: `python -m quorum_tui.tui.screenshots DIR`."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from quorum_tui.deploy.events import Phase
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.session import DEMO_MODEL, Setup


async def _until(pilot: Pilot[None], predicate: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await pilot.pause(0.2)


async def take(directory: Path, size: tuple[int, int] = (120, 40)) -> list[Path]:
    """Start the demo (it applies its plan and opens on the Chat), ask it a question, and save
    each screen as DIR/quorum-<screen>.svg."""
    app = QuorumApp(Setup(model=DEMO_MODEL, demo_workers=2, temperature=0.0))
    saved: list[Path] = []

    def save(name: str) -> None:
        saved.append(Path(app.save_screenshot(f"quorum-{name}.svg", str(directory))))

    async with app.run_test(size=size) as pilot:
        await _until(pilot, lambda: app.url is not None or app.deployment.phase == Phase.FAILED)
        await pilot.pause(0.5)
        for key in "What is the capital of France?":
            await pilot.press({" ": "space", "?": "question_mark"}.get(key, key))
        await pilot.press("enter")
        await _until(pilot, lambda: re.search(r" · [\d.]+ tokens/s", _chat_meta(app)) is not None)
        await pilot.pause(0.5)
        save("chat")
        await pilot.press("f2")
        await pilot.press("]")
        await pilot.pause(0.5)
        save("layers")
        await pilot.press("f1")
        await pilot.pause(4.5)
        save("cluster")
        await pilot.press("f3")
        await pilot.pause(0.3)
        app.query_one("ModelsPane").set_spec(DEMO_MODEL)  # type: ignore[attr-defined]
        app.preview_model(DEMO_MODEL)
        await _until(pilot, lambda: "fits" in str(app.query_one("#preview-text").render()))
        await pilot.pause(0.3)
        save("models")
        await pilot.press("?")
        await pilot.pause(0.3)
        save("help")
        await app.action_quit()
    return saved


def _chat_meta(app: QuorumApp) -> str:
    return " ".join(str(w.render()) for w in app.query(".message-meta"))


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "assets")
    target.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(take(target)):
        print(path)
