"""Where a long Markdown reply can be cut into independent pieces without changing its look.

A cut goes after a blank line outside any code fence, before a line that cannot continue a
list (no indent, no list marker), so every piece parses on its own and pieces rendered one
after another look like the whole. The pane renders a long reply as several pieces so that
each update renders only the newest text.
"""

from __future__ import annotations

import re

FENCE = "```"
CONTINUES = frozenset(" \t-*+>0123456789")
"""How a line may begin that could continue the block above it (a list, a quote, indented code)."""


def safe_cuts(text: str) -> list[int]:
    """Offsets just after each blank line that is outside a code fence and is followed by the
    start of a line that cannot continue the block above it."""
    cuts: list[int] = []
    in_fence = False
    offset = 0
    previous_blank = False
    for line in text.splitlines(keepends=True):
        offset += len(line)
        stripped = line.strip()
        if stripped.startswith(FENCE):
            in_fence = not in_fence
        blank = not stripped and line.endswith("\n")
        if (
            blank
            and not in_fence
            and not previous_blank
            and offset < len(text)
            and text[offset] not in CONTINUES
        ):
            cuts.append(offset)
        previous_blank = blank
    return cuts


def cut_point(text: str, start: int, limit: int) -> int | None:
    """Where to end a piece once `text` is longer than `limit`: the first safe cut after
    `start` at or past the limit, else the last one after `start`; None if there is none."""
    if len(text) <= limit:
        return None
    later = [cut for cut in safe_cuts(text) if cut > start]
    past = [cut for cut in later if cut >= limit]
    if past:
        return past[0]
    return later[-1] if later else None


def split_markdown(text: str, limit: int) -> list[str]:
    """`text` in pieces of about `limit` characters (more when no cut is near), each cut safely."""
    pieces: list[str] = []
    begin = 0
    last = 0
    for cut in safe_cuts(text):
        if cut - begin > limit and last > begin:
            pieces.append(text[begin:last])
            begin = last
        last = cut
    if len(text) - begin > limit and last > begin:
        pieces.append(text[begin:last])
        begin = last
    pieces.append(text[begin:])
    return pieces


LIST_ITEM = re.compile(r" {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")


def split_open_block(tail: str, max_lines: int) -> tuple[str, str] | None:
    """Cut a block still being written that has grown past `max_lines` lines, or None.

    Returns the part to freeze and the Markdown that continues it, so that only the newest
    lines of a long code fence or list are rendered again as they stream. An open fence is
    closed after the frozen part and opened again (same info string) before the rest; a list
    is cut before one of its items. While it streams, the block shows a seam there.
    """
    lines = tail.splitlines(keepends=True)
    if len(lines) <= max_lines:
        return None
    last = len(lines) - 1 if not lines[-1].endswith("\n") else len(lines)
    opener = lines[0].strip()
    if opener.startswith(FENCE):
        closed = any(line.strip().startswith(FENCE) for line in lines[1:last])
        if closed or last < 2:
            return None
        return "".join(lines[:last]) + FENCE + "\n", opener + "\n" + "".join(lines[last:])
    in_fence = False
    cut = 0
    for index, line in enumerate(lines[:last]):
        if line.strip().startswith(FENCE):
            in_fence = not in_fence
        elif index and not in_fence and LIST_ITEM.match(line):
            cut = index
    if not cut:
        return None
    return "".join(lines[:cut]), "".join(lines[cut:])
