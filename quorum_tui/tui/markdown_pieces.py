"""Markdown that grows at its end: finished pieces rendered once, the open block on each change."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderableType
from rich.markdown import Markdown as RichMarkdown
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

KEEP_WIDTHS = 4
"""Layout may ask at more than one width (with and without a scrollbar), so a few are kept."""

Key = tuple[int, Style]


def render(console: Console, options: ConsoleOptions, renderable: RenderableType) -> list[Strip]:
    """`renderable` as lines of `options.max_width` cells at most, not padded."""
    segments = console.render(renderable, options)
    return [
        Strip(line)
        for line in Segment.split_and_crop_lines(
            segments, options.max_width, include_new_lines=False, pad=False
        )
    ]


def join(lines: list[Strip], piece: list[Strip]) -> None:
    """Add a rendered piece after `lines` with the blank line Rich puts between two blocks.

    Rich starts some blocks (lists) with that blank line and ends others (rules) with it; then
    it is not doubled.
    """
    if lines and piece and lines[-1].cell_length and piece[0].cell_length:
        lines.append(Strip([]))
    lines.extend(piece)


class MarkdownPieces(Widget):
    """Markdown (Rich's renderer) as finished pieces and an open tail, drawn line by line.

    Each piece is cut at a blank line outside code (see `quorum_tui.chat.chunking`), rendered on
    its own once for each width and style it is shown at, and joined to the others with the
    blank line Rich puts between blocks, so the whole looks as if it were rendered at once. The
    tail is the block still being written: only it is rendered again when it changes. A layout
    costs the same however much text is above: a Static would render all of its Markdown again
    at every layout to learn its height.
    """

    DEFAULT_CSS = "MarkdownPieces { height: auto; }"

    def __init__(self, sources: list[str] | None = None, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.sources: list[str] = [source for source in sources or [] if source]
        self.tail = ""
        self._style: Style | None = None
        self._frozen: dict[Key, tuple[int, list[Strip]]] = {}
        self._shown: dict[Key, list[Strip]] = {}

    def append(self, sources: list[str]) -> None:
        """Add finished pieces after the last one."""
        self.sources.extend(source for source in sources if source)
        self._changed()

    def set_tail(self, tail: str) -> None:
        """Show `tail` after the finished pieces (the block still being written)."""
        if tail != self.tail:
            self.tail = tail
            self._changed()

    def _changed(self) -> None:
        self._shown.clear()
        self.refresh(layout=True)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._style = None

    def _join(self, lines: list[Strip], source: str, key: Key) -> None:
        width, style = key
        app = self.app
        options = app.console_options.update(highlight=False).update_width(width)
        join(lines, render(app.console, options, self.post_render(RichMarkdown(source), style)))

    def lines(self, width: int) -> list[Strip]:
        """Everything rendered at `width` cells in the widget's current style."""
        if width <= 0:
            return []
        if self._style is None:
            self._style = self.rich_style
        key = (width, self._style)
        shown = self._shown.get(key)
        if shown is not None:
            return shown
        done, frozen = self._frozen.get(key, (0, []))
        if done < len(self.sources):
            if key not in self._frozen and len(self._frozen) >= KEEP_WIDTHS:
                self._frozen.clear()
            for source in self.sources[done:]:
                self._join(frozen, source, key)
            self._frozen[key] = (len(self.sources), frozen)
        shown = frozen
        if self.tail:
            shown = list(frozen)
            self._join(shown, self.tail, key)
        if len(self._shown) >= KEEP_WIDTHS:
            self._shown.clear()
        self._shown[key] = shown
        return shown

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        lines = self.lines(width)
        return lines[y] if y < len(lines) else Strip.blank(width, self.rich_style)
