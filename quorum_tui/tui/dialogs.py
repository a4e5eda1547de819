"""Modal screens: a yes/no question, the host form, the unknown host key, the keys help."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static


class ConfirmDialog(ModalScreen[bool]):
    """A question with Yes / No; y and n answer it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="quorum.dialog.yes"),
        Binding("n,escape", "answer(False)", "No", id="quorum.dialog.no"),
    ]

    def __init__(self, title: str, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.question, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, id="yes", variant="primary")
                yield Button(self.no, id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def host_key_dialog(host: str, key_type: str, fingerprint: str) -> ConfirmDialog:
    return ConfirmDialog(
        "Unknown host key",
        f"{host} presented a {key_type} key never seen before:\n\n  {fingerprint}\n\n"
        "Trust it and remember it in Quorum's known_hosts? Answer no unless you can check "
        "this fingerprint on the host itself.",
        yes="Trust",
        no="Reject",
    )


HOST_FIELDS = (
    ("name", "Name", "gpu-a"),
    ("address", "Address", "192.168.1.20 or a host name"),
    ("user", "SSH user", "empty: from ~/.ssh/config or yours"),
    ("port", "SSH port", "empty: 22 or ~/.ssh/config"),
    ("rpc_port", "Worker port", "50052"),
    ("transport", "Transport", "tunnel (SSH, safe) or direct (unauthenticated)"),
)


class HostForm(ModalScreen[dict[str, str] | None]):
    """Add or edit a host: returns the fields as text, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="quorum.dialog.cancel"),
    ]

    def __init__(
        self,
        title: str,
        values: dict[str, str] | None = None,
        check: Callable[[dict[str, str]], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.values = values or {}
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            with Grid(classes="form"):
                for key, label, hint in HOST_FIELDS:
                    yield Label(label)
                    yield Input(self.values.get(key, ""), placeholder=hint, id=f"field-{key}")
            yield Static("", id="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def result(self) -> dict[str, str]:
        return {
            key: self.query_one(f"#field-{key}", Input).value.strip() for key, *_ in HOST_FIELDS
        }

    def on_input_submitted(self) -> None:
        self.save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.save()
        else:
            self.dismiss(None)

    def save(self) -> None:
        values = self.result()
        problem = self.check(values) if self.check else None
        if problem:
            self.query_one("#form-error", Static).update(problem)
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key binding: key, what it does, where, and its id for keymap.toml."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="quorum.help.close"),
    ]

    def __init__(self, rows: list[tuple[str, str, str, str]], keymap_file: str) -> None:
        super().__init__()
        self.rows = rows
        self.keymap_file = keymap_file

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Label("Keys", classes="dialog-title")
            table: DataTable[str] = DataTable(id="keys", cursor_type="row")
            table.add_columns("Key", "Action", "Where", "Binding id")
            for row in self.rows:
                table.add_row(*row)
            yield table
            yield Static(f'Remap keys in {self.keymap_file}: binding id = "keys".', id="help-hint")
