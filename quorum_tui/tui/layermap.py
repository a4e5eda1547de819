"""The layer map: the model's layers as a bar of stage segments, boundaries dragged or keyed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget

from quorum_tui.engine.plan import LayerPlan

STAGE_COLORS = ("#51607a", "#1f7a8c", "#3a8a4f", "#a0702a", "#7d4f9e", "#a04848", "#2f6fa8")
LINES_PER_ROW = 2
MIN_CELL = 2


def stage_color(index: int) -> str:
    if index == 0:
        return STAGE_COLORS[0]
    return STAGE_COLORS[1 + (index - 1) % (len(STAGE_COLORS) - 1)]


@dataclass(frozen=True)
class Geometry:
    """Where each layer sits: `cell` columns per layer, `per_row` layers per bar row."""

    n_layers: int
    cell: int
    per_row: int

    @classmethod
    def fit(cls, n_layers: int, width: int) -> Geometry:
        usable = max(width - 1, MIN_CELL)
        cell = max(MIN_CELL, usable // max(n_layers, 1))
        return cls(n_layers, cell, max(1, usable // cell))

    @property
    def rows(self) -> int:
        return max(1, -(-self.n_layers // self.per_row))

    def edge(self, layer: int) -> tuple[int, int]:
        """Content (x, y) of the left edge of `layer`; layer n_layers is the end of the bar."""
        row = min(layer // self.per_row, self.rows - 1)
        return (layer - row * self.per_row) * self.cell, row * LINES_PER_ROW

    def layer_at(self, x: int, y: int) -> int:
        """The layer edge nearest to a content position (0..n_layers)."""
        row = min(max(y // LINES_PER_ROW, 0), self.rows - 1)
        column = min(max((x + self.cell // 2) // self.cell, 0), self.per_row)
        return min(max(row * self.per_row + column, 0), self.n_layers)


@dataclass
class _Drag:
    candidates: list[int]
    anchor: int
    start: LayerPlan
    chosen: int | None = None


class LayerMap(Widget, can_focus=True):
    """Stages as coloured segments; drag a boundary or select one and move it with the keys."""

    ALLOW_SELECT = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "Boundary ←", id="quorum.layers.left"),
        Binding("right", "move(1)", "Boundary →", id="quorum.layers.right"),
        Binding("shift+left", "move(-10)", "10 ←", id="quorum.layers.left10", show=False),
        Binding("shift+right", "move(10)", "10 →", id="quorum.layers.right10", show=False),
        Binding("[", "select(-1)", "Prev boundary", id="quorum.layers.prev_boundary"),
        Binding("]", "select(1)", "Next boundary", id="quorum.layers.next_boundary"),
    ]
    DEFAULT_CSS = """
    LayerMap { height: auto; min-height: 2; }
    LayerMap:focus { background: $boost; }
    """

    class Changed(Message):
        """The user moved a boundary: `plan` is the new plan."""

        def __init__(self, layer_map: LayerMap, plan: LayerPlan) -> None:
            super().__init__()
            self.layer_map = layer_map
            self.plan = plan

        @property
        def control(self) -> LayerMap:
            return self.layer_map

    def __init__(self, plan: LayerPlan | None = None, **kwargs: str | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.plan = plan
        self.notes: list[tuple[str, bool | None]] = []
        self.selected = 0
        self._drag: _Drag | None = None

    def set_plan(
        self, plan: LayerPlan | None, notes: list[tuple[str, bool | None]] | None = None
    ) -> None:
        """Show `plan`; `notes` is per stage a short memory text and whether it fits."""
        self.notes = notes or []
        if self._drag is not None:
            self.refresh()
            return
        if plan is not None and self.plan is not None and len(plan.stages) != len(self.plan.stages):
            self.selected = 0
        self.plan = plan
        if plan is not None:
            self.selected = min(self.selected, max(len(plan.stages) - 2, 0))
        self.refresh(layout=True)

    @property
    def geometry(self) -> Geometry:
        n = self.plan.n_layers if self.plan else 1
        return Geometry.fit(n, self.content_size.width or self.size.width or 80)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if self.plan is None:
            return 1
        return Geometry.fit(self.plan.n_layers, width).rows * LINES_PER_ROW

    def render(self) -> Text:
        plan = self.plan
        if plan is None:
            return Text("no model or no plan yet", style="dim")
        geo = self.geometry
        owner = plan.assignment()[: plan.n_layers]
        width = geo.per_row * geo.cell + 1
        lines: list[Text] = []
        for row in range(geo.rows):
            first = row * geo.per_row
            layers = range(first, min(first + geo.per_row, plan.n_layers))
            bar = _Cells(width)
            labels = _Cells(width)
            for layer in layers:
                x = (layer - first) * geo.cell
                bar.fill(x, geo.cell, Style(bgcolor=stage_color(owner[layer])))
            for index, stage in enumerate(plan.stages):
                shown = [i for i in stage.layers if i in layers]
                if not shown:
                    continue
                x0 = (shown[0] - first) * geo.cell
                span = len(shown) * geo.cell - 1
                bar.write(x0 + 1, _fit(stage.name, span), Style(color="white", bold=True))
                rng = stage.describe().removeprefix("layers ").removeprefix("layer ")
                note, fits = self.notes[index] if index < len(self.notes) else ("", None)
                style = Style(color="red", bold=True) if fits is False else None
                text = _fit(f"{rng} {note}", span) if note else ""
                labels.write(
                    x0 + 1, text or _fit(rng, span), style or Style(color=stage_color(index))
                )
            for b, layer in enumerate(plan.boundaries()):
                x, y = geo.edge(layer)
                if y != row * LINES_PER_ROW:
                    continue
                active = b == self.selected and (self.has_focus or self._drag is not None)
                mark = Style(color="black", bgcolor="yellow", bold=True) if active else None
                bar.write(x, "┃", mark or Style(color="white", bold=True))
            lines += [bar.text(), labels.text()]
        return Text("\n").join(lines)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if self.plan is None:
            return
        offset = event.get_content_offset(self)
        if offset is None:
            return
        geo = self.geometry
        candidates = []
        for b, layer in enumerate(self.plan.boundaries()):
            x, y = geo.edge(layer)
            if y == offset.y // LINES_PER_ROW * LINES_PER_ROW and abs(offset.x - x) <= 1:
                candidates.append(b)
        if not candidates:
            return
        anchor = self.plan.boundaries()[candidates[0]]
        self._drag = _Drag(candidates, anchor, self.plan)
        if len(candidates) == 1:
            self._drag.chosen = self.selected = candidates[0]
        self.capture_mouse()
        self.focus()
        event.stop()
        self.refresh()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._drag_to(event)

    def _drag_to(self, event: events.MouseEvent) -> None:
        drag = self._drag
        if drag is None or self.plan is None:
            return
        offset = event.get_content_offset_capture(self)
        target = self.geometry.layer_at(offset.x, offset.y)
        if drag.chosen is None:
            if target == drag.anchor:
                return
            drag.chosen = max(drag.candidates) if target > drag.anchor else min(drag.candidates)
            self.selected = drag.chosen
        plan = drag.start.set_boundary(drag.chosen, target)
        if plan != self.plan:
            self.plan = plan
            self.refresh()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        drag = self._drag
        if drag is None:
            return
        self._drag_to(event)
        self._drag = None
        self.release_mouse()
        event.stop()
        if self.plan is not None and self.plan != drag.start:
            self.post_message(self.Changed(self, self.plan))
        self.refresh()

    def action_move(self, delta: int) -> None:
        if self.plan is None or len(self.plan.stages) < 2:
            return
        plan = self.plan.move_boundary(self.selected, delta)
        if plan != self.plan:
            self.plan = plan
            self.refresh()
            self.post_message(self.Changed(self, plan))

    def action_select(self, step: int) -> None:
        if self.plan is None or len(self.plan.stages) < 2:
            return
        self.selected = (self.selected + step) % (len(self.plan.stages) - 1)
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else ""


class _Cells:
    """A line of styled cells, written over in place, then turned into Text."""

    def __init__(self, width: int) -> None:
        self.chars = [" "] * width
        self.styles = [Style()] * width

    def fill(self, x: int, count: int, style: Style) -> None:
        for i in range(max(x, 0), min(x + count, len(self.chars))):
            self.styles[i] = style

    def write(self, x: int, text: str, style: Style) -> None:
        for i, char in enumerate(text, start=x):
            if 0 <= i < len(self.chars):
                self.chars[i] = char
                self.styles[i] = self.styles[i] + style

    def text(self) -> Text:
        out = Text()
        for char, style in zip(self.chars, self.styles, strict=True):
            out.append(char, style)
        return out
