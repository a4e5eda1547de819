"""The Cluster tab: the hosts table, the selected host's sparklines, and the log."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from quorum_tui.tui.hosts import HostStatus, sparkline, state_of
from quorum_tui.units import human_bytes

COLUMNS = ("Host", "Address", "State", "CPU", "CPU history", "Memory", "Memory history",
           "Worker", "RTT")  # fmt: skip


def state_text(host: HostStatus) -> Text:
    glyph, colour = state_of(host.state)
    return Text(f"{glyph} {host.state}", style=colour)


def host_cells(host: HostStatus) -> list[str | Text]:
    cpu = f"{host.cpu[-1]:.0f}%" if host.cpu else "-"
    if host.mem_used is not None and host.mem_total:
        memory = f"{human_bytes(host.mem_used)}/{human_bytes(host.mem_total)}"
    else:
        memory = "-"
    rtt = f"{host.rtt_ms:.1f} ms" if host.rtt_ms is not None else "-"
    return [
        host.name,
        host.address,
        state_text(host),
        cpu,
        Text(sparkline(host.cpu), style="green"),
        memory,
        Text(sparkline(host.memory), style="cyan"),
        host.endpoint or "-",
        rtt,
    ]


class ClusterPane(Vertical):
    """Hosts, one row each; the app owns the HostStatus list and calls `show`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "app.add_host", "Add host", id="quorum.cluster.add"),
        Binding("e", "app.edit_host", "Edit", id="quorum.cluster.edit"),
        Binding("delete,x", "app.remove_host", "Remove", id="quorum.cluster.remove"),
        Binding("c", "app.connect_host", "Connect", id="quorum.cluster.connect"),
        Binding("b", "app.bring_up", "Bring up", id="quorum.cluster.bring_up"),
        Binding("B", "app.bring_up_all", "Bring up all", id="quorum.cluster.bring_up_all"),
        Binding("s", "app.stop_host", "Stop", id="quorum.cluster.stop"),
        Binding("S", "app.stop_all", "Stop all", id="quorum.cluster.stop_all"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="cluster-title")
        table: DataTable[str | Text] = DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
        yield table
        with Horizontal(id="host-detail"):
            with Vertical():
                yield Label("CPU", id="cpu-label")
                yield Sparkline([], id="cpu-spark")
            with Vertical():
                yield Label("Memory", id="mem-label")
                yield Sparkline([], id="mem-spark")
        yield RichLog(id="log", markup=False, wrap=True, max_lines=500)

    def on_mount(self) -> None:
        table = self.query_one("#hosts", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.query_one("#log").display = False

    def show(self, title: str, hosts: list[HostStatus]) -> None:
        self.query_one("#cluster-title", Static).update(title)
        table: DataTable[str | Text] = self.query_one("#hosts", DataTable)
        keys = [h.name for h in hosts]
        existing = [str(k.value) for k in table.rows]
        if existing != keys:
            cursor = table.cursor_row
            table.clear()
            for host in hosts:
                table.add_row(*host_cells(host), key=host.name)
            if hosts:
                table.move_cursor(row=min(max(cursor, 0), len(hosts) - 1))
        else:
            for host in hosts:
                for column, value in zip(COLUMNS, host_cells(host), strict=True):
                    table.update_cell(host.name, column, value, update_width=True)
        self.show_detail(hosts)

    def selected_name(self) -> str | None:
        table = self.query_one("#hosts", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def show_detail(self, hosts: list[HostStatus]) -> None:
        name = self.selected_name()
        host = next((h for h in hosts if h.name == name), None)
        if host is None:
            return
        self.query_one("#cpu-label", Label).update(f"CPU of {host.name}")
        self.query_one("#mem-label", Label).update(f"Memory of {host.name}")
        self.query_one("#cpu-spark", Sparkline).data = list(host.cpu)
        self.query_one("#mem-spark", Sparkline).data = list(host.memory)

    def log_line(self, text: str) -> None:
        self.query_one("#log", RichLog).write(text)

    def toggle_log(self) -> None:
        log = self.query_one("#log")
        log.display = not log.display
