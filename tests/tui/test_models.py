"""The Models tab against a fake Hub: preview, download with progress, cancel and resume, use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar, Static

from quorum_tui.engine.synthetic import SyntheticSpec, write_synthetic
from quorum_tui.tui.app import QuorumApp
from quorum_tui.tui.models_pane import ModelsPane
from quorum_tui.tui.session import Setup
from tests.models.hubserver import FakeHub, start_hub
from tests.tui.helpers import wait_until

REPO = "quorum-test/tui-GGUF"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub holding one repository with a 6-layer synthetic model (~6 MiB)."""
    files = tmp_path / "repo"
    write_synthetic(files / "tui-F32.gguf", SyntheticSpec(n_layers=6, n_embd=128))
    state = FakeHub()
    state.add_dir(REPO, files)
    server = start_hub(state)
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", state.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def text_of(app: QuorumApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def open_models(pilot, app: QuorumApp, spec: str) -> ModelsPane:  # type: ignore[no-untyped-def]
    await pilot.press("3")
    await pilot.pause()
    pane = app.query_one(ModelsPane)
    app.query_one("#spec", Input).value = spec
    app.query_one("#spec", Input).focus()
    await pilot.press("enter")
    return pane


async def test_preview_download_and_use(hub: FakeHub) -> None:
    app = QuorumApp(Setup(local_free=1 << 30))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_models(pilot, app, f"{REPO}:F32")
        await wait_until(pilot, lambda: "layers" in text_of(app, "#preview-text"))
        preview = text_of(app, "#preview-text")
        assert "6 layers" in preview and "not downloaded yet" in preview
        assert "fits on this machine alone" in preview and "not needed" in preview
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: "in the cache" in text_of(app, "#preview-text"))
        assert not app.query_one("#progress", ProgressBar).display
        table = app.query_one("#cached", DataTable)
        assert f"{REPO}:F32" in [str(k.value) for k in table.rows]
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: app.info is not None)
        assert app.info is not None and app.info.n_layers == 6
        assert app.plan is not None and app.plan.counts == (6,)


async def test_cancel_keeps_the_part_and_download_resumes(
    hub: FakeHub, quorum_dirs: dict[str, Path]
) -> None:
    hub.slow.add("tui-F32.gguf")
    app = QuorumApp(Setup(local_free=1 << 30))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_models(pilot, app, f"{REPO}:F32")
        await pilot.press("ctrl+g")
        bar = app.query_one("#progress", ProgressBar)
        await wait_until(pilot, lambda: bar.display and (bar.progress or 0) > 200_000)
        assert "B/s" in text_of(app, "#progress-text") and "ETA" in text_of(app, "#progress-text")
        await pilot.press("escape")
        await wait_until(pilot, lambda: "cancelled" in text_of(app, "#progress-text"))
        assert list(quorum_dirs["cache"].rglob("*.part"))
        hub.slow.clear()
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: "downloaded" in text_of(app, "#progress-text"))
        ranges = [r for method, path, r in hub.requests if method == "GET" and "tui-F32" in path]
        assert ranges[-1] is not None and ranges[-1].startswith("bytes=")
        assert int(ranges[-1].removeprefix("bytes=").split("-")[0]) > 200_000
        assert not list(quorum_dirs["cache"].rglob("*.part"))


async def test_bad_spec_preview_says_why(hub: FakeHub) -> None:
    app = QuorumApp(Setup(local_free=1 << 30))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_models(pilot, app, "quorum-test/missing-GGUF:Q4_K_M")
        await wait_until(pilot, lambda: "cannot preview" in text_of(app, "#preview-text"))
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: "download failed" in text_of(app, "#progress-text"))
        assert any("download" in e for e in app.errors)
        assert app.is_running
