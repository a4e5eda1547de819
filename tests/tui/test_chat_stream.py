"""Long replies through the pane: pieces, order, storage; and the `quorum bench tui` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quorum_tui.bench.tui import sample_tokens, token_server
from quorum_tui.chat.client import ReplyStats
from quorum_tui.chat.session import reply_message
from quorum_tui.chat.store import ConversationStore
from quorum_tui.cli import main
from quorum_tui.tui.chat import CHUNK_CHARS, TAIL_LINES, MessageView
from quorum_tui.tui.markdown_pieces import MarkdownPieces
from tests.served import eventually
from tests.tui.test_chat import Host, pane_of


async def test_a_long_reply_streams_into_frozen_pieces_in_order(tmp_path: Path) -> None:
    tokens = 1500
    pieces = sample_tokens()
    expected = "".join(pieces[i % len(pieces)] for i in range(tokens))
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    with token_server() as url:
        async with app.run_test(size=(100, 30)) as pilot:
            pane = pane_of(app)
            pane.set_endpoint(url, "synthetic stream")
            pane.max_tokens, pane.request_options = tokens, {"bench_rate": 0}
            await pane.send("a long one please")
            await eventually(lambda: bool(app.finished))
            await pilot.pause()
            reply = app.query(MessageView)[-1]
            assert reply.text == expected
            assert len(reply.sources) >= len(expected) // (2 * CHUNK_CHARS)
            assert reply.tail_source == ""
            assert len(reply.query(MarkdownPieces)) == 1
            assert app.finished[0].message.tokens == tokens
    assert store.open(store.list()[0].id).messages[-1].text == expected


async def test_complete_blocks_move_out_of_the_streaming_tail(tmp_path: Path) -> None:
    app = Host(ConversationStore(tmp_path / "c.sqlite3"))
    async with app.run_test(size=(100, 30)) as pilot:
        view = MessageView(reply_message("", ReplyStats(), "complete", None), live=True)
        await app.query_one("#chat-log").mount(view)
        view.write("# Title\n\nFirst para")
        assert view.sources == ["# Title\n\n"] and view.tail_source == "First para"
        await pilot.pause()
        assert "First para" in shown_text(view.body)
        view.write("graph.\n\n```py\nx = 1\n\n")
        assert view.sources == ["# Title\n\n", "First paragraph.\n\n"]
        assert view.tail_source == "```py\nx = 1\n\n"
        view.write("y = 2\n```\n\nEnd")
        assert view.sources[-1] == "```py\nx = 1\n\ny = 2\n```\n\n"
        assert view.text == "# Title\n\nFirst paragraph.\n\n```py\nx = 1\n\ny = 2\n```\n\nEnd"
        view.finish(reply_message(view.text, ReplyStats(), "complete", None))
        assert view.tail_source == "" and view.sources[-1] == "End"
        await pilot.pause()
        assert shown_text(view.body).splitlines()[-1].strip() == "End"


def shown_text(pieces: MarkdownPieces) -> str:
    return "\n".join(line.text for line in pieces.lines(pieces.content_size.width))


def test_bench_tui_reports_lag_and_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "tui", "--json", "--seconds", "0.5", "--rate", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target_rate"] == 500 and result["target_p99_ms"] == 50.0
    idle, target, unpaced = result["phases"]
    assert (idle["name"], target["name"], unpaced["name"]) == ("idle", "target", "unpaced")
    assert target["tokens"] == unpaced["tokens"] == 250
    assert target["offered_rate"] == 500 and unpaced["offered_rate"] is None
    for phase in (idle, target, unpaced):
        assert phase["samples"] > 0
        assert 0 <= phase["lag_p50_ms"] <= phase["lag_p99_ms"] <= phase["lag_max_ms"]
    assert target["received_rate"] > 0 and unpaced["received_rate"] > 0


def test_bench_tui_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "tui", "--seconds", "0"]) == 1
    assert "--seconds between 0.5 and 60" in capsys.readouterr().err


async def test_a_long_code_block_streams_with_a_short_tail(tmp_path: Path) -> None:
    app = Host(ConversationStore(tmp_path / "c.sqlite3"))
    async with app.run_test(size=(100, 30)) as pilot:
        view = MessageView(reply_message("", ReplyStats(), "complete", None), live=True)
        await app.query_one("#chat-log").mount(view)
        text = "Here:\n\n```py\n" + "".join(f"x{i} = {i}\n" for i in range(200)) + "```\n\nDone."
        for start in range(0, len(text), 37):
            view.write(text[start : start + 37])
            assert view.tail_source.count("\n") <= TAIL_LINES + 1
        assert view.text == text
        await pilot.pause()
        shown = shown_text(view.body)
        assert "x0 = 0" in shown and "x199 = 199" in shown and "Done." in shown
        view.finish(reply_message(text, ReplyStats(), "complete", None))
        assert view.text == text
