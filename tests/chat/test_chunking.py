"""Cutting long Markdown into pieces that each parse on their own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quorum_tui.chat.chunking import cut_point, safe_cuts, split_markdown, split_open_block

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


def test_a_long_open_fence_is_closed_and_reopened_at_a_line() -> None:
    code = "```py\n" + "".join(f"x{i} = {i}\n" for i in range(50)) + "y = 5"
    done, rest = split_open_block(code, 40) or ("", "")
    assert done == "```py\n" + "".join(f"x{i} = {i}\n" for i in range(50)) + "```\n"
    assert rest == "```py\ny = 5"
    assert safe_cuts(done + "\n" + "after") == [len(done) + 1]


def test_a_long_list_is_cut_before_its_last_complete_item() -> None:
    items = "".join(f"{i}. item {i}\n   more about {i}\n" for i in range(1, 30))
    done, rest = split_open_block(items, 40) or ("", "")
    assert done + rest == items and rest == "29. item 29\n   more about 29\n"
    done, rest = split_open_block(items + "30. la", 40) or ("", "")
    assert done + rest == items + "30. la" and rest == "29. item 29\n   more about 29\n30. la"


def test_open_blocks_that_are_short_or_cannot_be_cut_are_left_whole() -> None:
    assert split_open_block("```py\nx = 1\n", 40) is None
    assert split_open_block("word " * 500, 40) is None
    lines = "".join(f"a line of a paragraph {i}\n" for i in range(60))
    assert split_open_block(lines, 40) is None
    fenced = "- item\n\n  ```\n" + "".join(f"  - not an item {i}\n" for i in range(60)) + "  ```\n"
    assert split_open_block(fenced + "  tail", 40) is None
    closed = "```\n" + "x\n" * 50 + "```\n"
    assert split_open_block(closed + "more", 40) is None
