"""The Models tab: cached models, a spec field, the header preview, and a download's progress."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static

from quorum_tui.units import human_bytes


class ModelsPane(Vertical):
    """The app fills it: `show_cached`, `show_preview`, `show_progress`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+o", "use", "Use model", id="quorum.models.use"),
        Binding("ctrl+g", "app.download", "Download", id="quorum.models.download"),
        Binding("escape", "app.cancel_download", "Cancel download", id="quorum.models.cancel"),
    ]

    class Preview(Message):
        """The user asked for a preview of `spec`."""

        def __init__(self, spec: str) -> None:
            super().__init__()
            self.spec = spec

    class Use(Message):
        """The user wants the app to run `spec`."""

        def __init__(self, spec: str) -> None:
            super().__init__()
            self.spec = spec

    def compose(self) -> ComposeResult:
        yield Label("Cached models (enter to preview)")
        table: DataTable[str] = DataTable(id="cached", cursor_type="row")
        yield table
        with Horizontal(id="spec-row"):
            yield Input(
                placeholder="a path, owner/repo:Q4_K_M, an https URL, or synthetic:layers=8",
                id="spec",
            )
            yield Button("Preview", id="preview")
            yield Button("Use", id="use", variant="primary")
            yield Button("Download", id="download")
            yield Button("Cancel", id="cancel", variant="error")
        yield Static("", id="preview-text")
        yield ProgressBar(id="progress", show_eta=True)
        yield Static("", id="progress-text", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#cached", DataTable)
        for column in ("Model", "Size"):
            table.add_column(column, key=column)
        self.query_one("#progress").display = False

    def show_cached(self, rows: list[tuple[str, int, str]]) -> None:
        """(name, bytes, spec) for each cached model."""
        table: DataTable[str] = self.query_one("#cached", DataTable)
        table.clear()
        for name, size, spec in rows:
            table.add_row(name, human_bytes(size), key=spec)
        if not rows:
            table.add_row("(none yet)", "", key="")

    def show_preview(self, text: str) -> None:
        self.query_one("#preview-text", Static).update(text)

    def show_progress(self, done: int, total: int | None, text: str) -> None:
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=total, progress=done)
        self.query_one("#progress-text", Static).update(text)

    def hide_progress(self, text: str = "") -> None:
        """Hide the bar; `text` stays as the outcome."""
        self.query_one("#progress").display = False
        self.query_one("#progress-text", Static).update(text)

    @property
    def spec(self) -> str:
        return self.query_one("#spec", Input).value.strip()

    def set_spec(self, spec: str) -> None:
        self.query_one("#spec", Input).value = spec

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        spec = str(event.row_key.value or "")
        if spec:
            self.set_spec(spec)
            self.post_message(self.Preview(spec))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.post_message(self.Preview(event.value.strip()))

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "preview" and self.spec:
            self.post_message(self.Preview(self.spec))
        elif event.button.id == "use":
            self.action_use()
        elif event.button.id == "download":
            await self.app.run_action("download")
        elif event.button.id == "cancel":
            await self.app.run_action("cancel_download")

    def action_use(self) -> None:
        if self.spec:
            self.post_message(self.Use(self.spec))
        else:
            self.app.notify("type a model spec first", severity="warning")
