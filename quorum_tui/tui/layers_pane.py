"""The Layers tab: the layer map, each stage's memory against its host, Auto and Apply."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Static

from quorum_tui.deploy.placement import CacheCoverage
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import stage_memory
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.tui.layermap import LayerMap, stage_color
from quorum_tui.tui.session import model_label, planned_ranges, realized_ranges
from quorum_tui.units import human_bytes

COLUMNS = ("Stage", "Host", "Planned", "Weights", "Needs", "Free", "Fits", "Cached", "Realized")


class LayersPane(Vertical):
    """Shows a plan; the app owns it and calls `show` and `show_realized`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "app.auto_plan", "Auto", id="quorum.layers.auto"),
        Binding("w", "swap_next", "Swap worker →", id="quorum.layers.swap"),
        Binding("g", "app.speculation", "Speculation", id="quorum.layers.spec"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("no model yet: pick one on the Models tab", id="model-line")
        yield Static("", id="advice")
        yield LayerMap(id="layer-map")
        table: DataTable[str | Text] = DataTable(id="stages", cursor_type="row")
        yield table
        with Horizontal(id="layer-buttons"):
            yield Button("Auto", id="auto", tooltip="restore the planner's proposal (u)")
            yield Button("Swap →", id="swap", tooltip="swap the selected worker with the next (w)")
            yield Button(
                "Apply", id="apply", variant="primary", tooltip="(re)start the coordinator (a)"
            )
            yield Button("Stop", id="stop", variant="error", tooltip="stop the coordinator")
        yield Static("coordinator: not started", id="coordinator-status")

    def on_mount(self) -> None:
        table = self.query_one("#stages", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    def show(
        self,
        info: ModelInfo | None,
        plan: LayerPlan | None,
        free: Sequence[int | None],
        settings: EngineSettings,
        realized: Sequence[int] | None = None,
        advice: str = "",
        draft: ModelInfo | None = None,
        coverage: CacheCoverage | None = None,
    ) -> None:
        """Redraw everything from the model, the plan, each stage's free memory, and realized;
        `advice` says whether the model needs sharding at all; `coverage`, how much of each
        worker's range its tensor cache holds (a load sends the rest over its link)."""
        line = self.query_one("#advice", Static)
        line.update(advice)
        line.display = bool(advice)
        if info is not None:
            context = (
                f"context {settings.ctx} x {settings.slots} slots, speculation {settings.spec}"
            )
            if note := settings.server.memory_note():
                context += f", {note}"
            if draft is not None:
                context += f" ({Path(draft.path).name} on the coordinator)"
            self.query_one("#model-line", Static).update(f"{model_label(info)}, {context}")
        layer_map = self.query_one(LayerMap)
        table: DataTable[str | Text] = self.query_one("#stages", DataTable)
        table.clear()
        if info is None or plan is None:
            layer_map.set_plan(plan)
            return
        memory = stage_memory(info, plan, settings.ctx, settings.slots, draft)
        notes: list[tuple[str, bool | None]] = []
        for index, need in enumerate(memory):
            have = free[index] if index < len(free) else None
            fits = None if have is None else need.total <= have
            room = "" if have is None else f"/{short_bytes(have)}"
            notes.append((f"{short_bytes(need.total)}{room}", fits))
        layer_map.set_plan(plan, notes)
        planned = planned_ranges(plan)
        got = realized_ranges(realized, len(plan.stages)) if realized else None
        for index, stage in enumerate(plan.stages):
            need = memory[index]
            have = free[index] if index < len(free) else None
            fits = None if have is None else need.total <= have
            verdict = {True: Text("yes", "green"), False: Text("NO", "bold red"), None: Text("?")}
            needs_text = Text(human_bytes(need.total), style="bold red" if fits is False else "")
            if got is None:
                real = Text("-", style="dim")
            elif got[index] == planned[index]:
                real = Text(got[index], style="green")
            else:
                real = Text(f"{got[index]} ≠", style="bold red")
            table.add_row(
                Text("■ ", style=stage_color(index)) + Text(stage.name),
                stage.endpoint or "local",
                planned[index],
                human_bytes(need.weights),
                needs_text,
                "?" if have is None else human_bytes(have),
                verdict[fits],
                cached_text(coverage, plan, index),
                real,
                key=str(index),
            )

    def set_status(self, text: str | Text) -> None:
        self.query_one("#coordinator-status", Static).update(text)

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"auto": "auto_plan", "apply": "apply", "stop": "stop_coordinator"}
        if event.button.id in actions:
            await self.app.run_action(actions[event.button.id])
        elif event.button.id == "swap":
            self.action_swap_next()

    def action_swap_next(self) -> None:
        layer_map = self.query_one(LayerMap)
        plan = layer_map.plan
        if plan is None or len(plan.workers) < 2:
            self.app.notify("swapping needs two workers", severity="warning")
            return
        table = self.query_one("#stages", DataTable)
        worker = max(table.cursor_row - 1, 0)
        other = worker + 1 if worker + 1 < len(plan.workers) else worker - 1
        swapped = plan.swap_workers(worker, other)
        layer_map.set_plan(swapped)
        layer_map.post_message(LayerMap.Changed(layer_map, swapped))


def cached_text(coverage: CacheCoverage | None, plan: LayerPlan, stage: int) -> Text:
    """The share of a worker's range in its tensor cache ("-": the coordinator reads the
    model file; "?": unknown, a local worker or one Quorum did not start)."""
    if stage == 0:
        return Text("-", style="dim")
    share = coverage.share(plan, stage) if coverage is not None else None
    if share is None:
        return Text("?", style="dim")
    return Text(f"{share:.0%}", style="green" if share >= 0.999 else "")


def short_bytes(n: int) -> str:
    """1.5 GiB -> '1.5G', for labels inside the bar."""
    return human_bytes(n).replace(" ", "").replace("iB", "").replace("B", "")
