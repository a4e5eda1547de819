"""Progress events as text: what the CLI draws on stderr."""

from __future__ import annotations

import io

from quorum_tui.models.download import Progress
from quorum_tui.models.progress import ProgressLine, progress_text


def event(**fields: object) -> Progress:
    base = {"name": "m-Q8_0.gguf", "index": 1, "count": 1, "phase": "download"}
    return Progress(**{**base, "done": 0, "total": None, **fields})  # type: ignore[arg-type]


def test_progress_text() -> None:
    mid = event(done=3 << 20, total=12 << 20, rate=1 << 20, eta=9.0)
    assert progress_text(mid) == "m-Q8_0.gguf   25%  3.0 MiB/12.0 MiB  1.0 MiB/s  ETA 9s"
    assert mid.fraction == 0.25
    unknown = event(done=2048, rate=0.0)
    assert progress_text(unknown) == "m-Q8_0.gguf  2.0 KiB/?  0 B/s"
    assert unknown.fraction is None
    part = event(index=2, count=3, phase="done", done=10, total=10)
    assert progress_text(part) == "[2/3] m-Q8_0.gguf  10 B done"
    resumed = event(phase="hash", done=5 << 20, total=9 << 20, resumed_from=5 << 20)
    assert "resuming after 5.0 MiB already on disk" in progress_text(resumed)
    assert progress_text(event(phase="verify", done=9, total=9)) == "m-Q8_0.gguf  checking 9 B"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_redraws_one_line_on_a_terminal() -> None:
    tty = Tty()
    line = ProgressLine(tty)
    line(event(done=1 << 20, total=4 << 20, rate=1 << 20, eta=3.0))
    line(event(done=4 << 20, total=4 << 20, rate=1 << 20, eta=0.0))
    line(event(phase="done", done=4 << 20, total=4 << 20))
    frames = tty.getvalue().split("\r")
    assert frames[0] == "" and len(frames) == 4
    assert frames[1].startswith("m-Q8_0.gguf   25%")
    assert frames[3].rstrip() == "m-Q8_0.gguf  4.0 MiB done" and frames[3].endswith("\n")
    assert len(frames[3]) - 1 >= len(frames[2]), "a shorter line must blank the longer one"


def test_progress_line_prints_only_milestones_to_a_file() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    line(event(done=1, total=4))
    line(event(phase="done", done=4, total=4))
    assert out.getvalue() == "m-Q8_0.gguf  4 B done\n"
