"""Cutting long Markdown into pieces that each parse on their own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quorum_tui.chat.chunking import cut_point, safe_cuts, split_markdown

DOC = "# Title\n\nFirst paragraph.\n\n```py\nx = 1\n\ny = 2\n```\n\nLast one.\n"


def test_cuts_follow_blank_lines_outside_fences() -> None:
    cuts = safe_cuts(DOC)
    assert [DOC[:c] for c in cuts] == [
        "# Title\n\n",
        "# Title\n\nFirst paragraph.\n\n",
        "# Title\n\nFirst paragraph.\n\n```py\nx = 1\n\ny = 2\n```\n\n",
    ]


def test_cut_point_waits_for_the_limit_and_new_text() -> None:
    assert cut_point(DOC, 0, len(DOC)) is None
    assert cut_point(DOC, 0, 10) == len("# Title\n\nFirst paragraph.\n\n")
    assert cut_point(DOC, 0, 30) == len(DOC) - len("Last one.\n")
    assert cut_point(DOC, 30, 100) is None
    assert cut_point(DOC + "x" * 100, 0, 100) == len(DOC) - len("Last one.\n")
    assert cut_point(DOC, len(DOC) - 3, 10) is None
    assert cut_point("a\n\nb", 0, 1) == 3
    assert cut_point("```\na\n\nb", 0, 1) is None


def test_split_keeps_every_character_and_the_fences_whole() -> None:
    text = DOC * 20
    pieces = split_markdown(text, 60)
    assert "".join(pieces) == text
    assert len(pieces) > 10
    assert all(piece.count("```") % 2 == 0 for piece in pieces)
    assert split_markdown("", 10) == [""]
    assert split_markdown("one long line without breaks", 5) == ["one long line without breaks"]


@given(st.lists(st.sampled_from(["word ", "\n", "\n\n", "```\n", "- item\n"]), max_size=80),
       st.integers(min_value=1, max_value=80))  # fmt: skip
def test_split_is_lossless_for_any_text(parts: list[str], limit: int) -> None:
    text = "".join(parts)
    pieces = split_markdown(text, limit)
    assert "".join(pieces) == text
    assert all(pieces[:-1])
