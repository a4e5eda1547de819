"""Progress events rendered as one line of text (the CLI writes it to stderr)."""

from __future__ import annotations

import sys
from typing import TextIO

from quorum_tui.models.download import Progress
from quorum_tui.units import human_bytes, human_duration, human_rate


def progress_text(p: Progress) -> str:
    """`[1/2] model-Q8_0.gguf  42%  12.0 MiB/28.5 MiB  8.1 MiB/s  ETA 2s`."""
    head = f"[{p.index}/{p.count}] {p.name}" if p.count > 1 else p.name
    total = human_bytes(p.total) if p.total else "?"
    if p.phase == "hash":
        return f"{head}  resuming after {human_bytes(p.done)} already on disk"
    if p.phase == "verify":
        return f"{head}  checking {total}"
    if p.phase == "done":
        return f"{head}  {total} done"
    percent = f"{100 * p.done / p.total:3.0f}%  " if p.total else ""
    eta = f"  ETA {human_duration(p.eta)}" if p.eta is not None else ""
    return f"{head}  {percent}{human_bytes(p.done)}/{total}  {human_rate(p.rate)}{eta}"


class ProgressLine:
    """A callback drawing events on one terminal line (plain lines when not a terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = 0

    def __call__(self, p: Progress) -> None:
        text = progress_text(p)
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            self.width = len(text)
            end = "\n" if p.phase == "done" else ""
            self.stream.write(f"\r{text}{pad}{end}")
        elif p.phase in ("hash", "done"):
            self.stream.write(text + "\n")
        self.stream.flush()
