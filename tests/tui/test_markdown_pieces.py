"""Markdown cut at safe points and rendered piece by piece looks like the whole rendered at once."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.markdown import Markdown
from textual.strip import Strip

from quorum_tui.chat.chunking import safe_cuts
from quorum_tui.tui.markdown_pieces import join, render

BLOCKS = [
    "# Heading\n\n",
    "## Smaller heading\n\n",
    "A paragraph with **bold**, `code` and a [link](https://example.com).\n\n",
    "A paragraph\nset on two lines.\n\n",
    "- one\n- two\n\n",
    "1. first\n2. second\n\n",
    "- outer\n  - inner\n\n",
    "> a quote\n> on two lines\n\n",
    "```py\nx = 1\n\ny = 2\n```\n\n",
    "```\nplain code\n```\n\n",
    "---\n\n",
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n",
]


def shown(pieces: list[str], width: int) -> list[str]:
    console = Console(width=width, color_system=None, force_terminal=False)
    options = console.options.update_width(width)
    lines: list[Strip] = []
    for piece in pieces:
        join(lines, render(console, options, Markdown(piece)))
    return [line.text.rstrip() for line in lines]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=7),
    st.sampled_from([20, 48, 100]),
    st.data(),
)
def test_pieces_cut_at_safe_points_look_like_the_whole(
    blocks: list[str], width: int, data: st.DataObject
) -> None:
    text = "".join(blocks)
    cuts = safe_cuts(text)
    chosen = data.draw(st.lists(st.sampled_from(cuts), unique=True)) if cuts else []
    bounds = [0, *sorted(chosen), len(text)]
    pieces = [text[start:end] for start, end in itertools.pairwise(bounds)]
    assert shown(pieces, width) == shown([text], width)


def test_every_safe_cut_of_a_long_reply_keeps_its_look() -> None:
    text = "".join(BLOCKS) * 2
    whole = shown([text], 60)
    for cut in safe_cuts(text):
        assert shown([text[:cut], text[cut:]], 60) == whole, text[:cut][-40:]
