"""The Chat pane in a small host app, against a real coordinator serving a synthetic model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from quorum_tui.chat.store import ConversationStore, Message
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.tui.chat import NO_MODEL, ChatNotice, ChatPane, ConversationsDialog, MessageView
from tests.served import NO_EOS, Served, eventually, served, served_in_thread


class Host(App[None]):
    """Just the pane, the way the Chat tab mounts it."""

    def __init__(self, store: ConversationStore | None) -> None:
        super().__init__()
        self.store = store
        self.finished: list[ChatPane.ReplyFinished] = []

    def compose(self) -> ComposeResult:
        yield ChatPane(self.store, id="chat-pane")

    def on_chat_pane_reply_finished(self, event: ChatPane.ReplyFinished) -> None:
        self.finished.append(event)


@pytest.fixture(scope="module")
def server(slow_model: Path) -> Iterator[Served]:
    with served_in_thread(slow_model) as running:
        yield running


def pane_of(app: Host) -> ChatPane:
    return app.query_one(ChatPane)


async def type_prompt(pilot: Pilot[None], text: str) -> None:
    await pilot.click("#chat-input")
    await pilot.press(*text, "enter")


def notices(app: Host) -> list[str]:
    return [n.text for n in app.query(ChatNotice)]


async def test_a_prompt_streams_into_the_pane(server: Served, tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = pane_of(app)
        pane.set_endpoint(server.url, server.plan.summary())
        pane.max_tokens, pane.request_options = 8, NO_EOS
        await type_prompt(pilot, "hello")
        await eventually(lambda: bool(app.finished))
        await pilot.pause()
        [done] = app.finished
        assert done.error is None and done.message.status == "complete"
        user, reply = app.query(MessageView)
        assert user.text == "hello"
        assert reply.text == done.message.text and reply.text
        meta = str(reply.meta.render())
        assert "tokens/s" in meta and "first token" in meta
        assert f"plan {server.plan.summary()}" in meta
        assert pane.query_one("#chat-input").value == ""  # type: ignore[attr-defined]
    [row] = store.list()
    stored = store.open(row.id).messages
    assert [(m.role, m.text) for m in stored] == [("user", "hello"), ("assistant", reply.text)]
    assert stored[1].tokens_per_s is not None and stored[1].plan == server.plan.summary()


async def test_without_a_model_the_pane_says_what_to_do(tmp_path: Path) -> None:
    app = Host(ConversationStore(tmp_path / "c.sqlite3"))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.set_endpoint(None, "")
        await type_prompt(pilot, "anyone?")
        await eventually(lambda: bool(notices(app)))
        assert notices(app) == [NO_MODEL]
        assert "Apply a plan on the Layers screen" in NO_MODEL
        assert pane.query_one("#chat-input").value == "anyone?"  # type: ignore[attr-defined]
        pane.report_error("the coordinator stopped: worker w1 is unreachable")
        await eventually(lambda: len(notices(app)) == 2)
        assert app.is_running


async def test_escape_stops_a_generation(
    tiny_model: Path, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.start(1)
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    # Through a worker, so that 1,500 tokens take seconds rather than one.
    async with (
        served(tiny_model, local_cluster.refs) as server,
        app.run_test(size=(100, 30)) as pilot,
    ):
        pane = pane_of(app)
        pane.set_endpoint(server.url, server.plan.summary())
        pane.max_tokens, pane.request_options = 1500, NO_EOS
        await type_prompt(pilot, "go on forever")
        await eventually(lambda: pane.reply is not None and pane.reply.stats.tokens >= 1)
        live = app.query(MessageView)[-1]
        await eventually(lambda: bool(live.text) and pane.generating)
        assert live.text == pane.reply.text[: len(live.text)]
        assert "streaming" in str(live.meta.render()) or "waiting" in str(live.meta.render())
        await pilot.press("escape")
        await eventually(lambda: bool(app.finished))
        await pilot.pause()
        [done] = app.finished
        assert done.message.status == "stopped" and done.error is None
        assert done.message.tokens is not None and done.message.tokens < 1500
        reply = app.query(MessageView)[-1]
        assert reply.meta.has_class("stopped") and "stopped" in str(reply.meta.render())
        assert not pane.generating
    stored = store.open(store.list()[0].id).messages[-1]
    assert (stored.status, stored.text) == ("stopped", done.message.text)


async def test_a_new_conversation_mid_reply_keeps_the_old_one(
    server: Served, tmp_path: Path
) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = pane_of(app)
        pane.set_endpoint(server.url, server.plan.summary())
        pane.max_tokens, pane.request_options = 1500, NO_EOS
        await type_prompt(pilot, "first topic")
        await eventually(lambda: pane.reply is not None and pane.reply.stats.tokens >= 1)
        first = pane.session.conversation_id
        await pilot.press("ctrl+n")
        await eventually(lambda: bool(app.finished) and not app.query(MessageView))
        assert app.finished[0].message.status == "stopped"
        assert pane.session.conversation is None and not pane.generating
    assert first is not None
    assert [m.role for m in store.open(first).messages] == ["user", "assistant"]
    assert store.open(first).messages[1].status == "stopped"


async def test_a_worker_killed_mid_reply_is_a_visible_error(
    slow_model: Path, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.start(1)
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    serving = served(slow_model, local_cluster.refs, failover=False)
    async with serving as running, app.run_test() as pilot:
        pane = pane_of(app)
        pane.set_endpoint(running.url, running.plan.summary())
        pane.max_tokens, pane.request_options = 1000, NO_EOS
        await type_prompt(pilot, "keep talking")
        await eventually(lambda: pane.reply is not None and pane.reply.stats.tokens >= 1)
        local_cluster.workers[0].kill()
        await eventually(lambda: bool(app.finished))
        await pilot.pause()
        [done] = app.finished
        assert done.message.status == "error"
        assert done.error is not None and "stopped mid-reply" in done.error
        assert any("stopped mid-reply" in text for text in notices(app))
        pane.report_error(str(await running.deployment.wait()))
        await eventually(lambda: len(notices(app)) == 2)
        assert "w1" in notices(app)[-1]
        assert app.is_running and not pane.generating
        assert [m.role for m in pane.session.messages] == ["user", "assistant"]
    [row] = store.list()
    assert store.open(row.id).messages[0].text == "keep talking"


def kill_after(tokens: int, reply: Callable[[], Any], kill: Callable[[], None]) -> threading.Thread:
    """A thread that calls `kill` once the streaming reply has `tokens` tokens: polled off the
    event loop, which a fast stream keeps too busy to look in time."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = reply()
            if current is not None and current.stats.tokens >= tokens:
                kill()
                return
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


async def test_a_worker_killed_mid_reply_fails_over_and_the_header_says_so(
    slow_model: Path, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.start(1)
    store = ConversationStore(tmp_path / "c.sqlite3")
    app = Host(store)
    async with served(slow_model, local_cluster.refs) as running, app.run_test() as pilot:
        pane = pane_of(app)
        pane.set_endpoint(running.url, running.plan.summary())
        pane.max_tokens, pane.request_options = 300, {**NO_EOS, "temperature": 0}
        killer = kill_after(20, lambda: pane.reply, local_cluster.workers[0].kill)
        await type_prompt(pilot, "keep talking")
        await eventually(lambda: bool(app.finished), timeout=120)
        killer.join(timeout=10)
        await pilot.pause()
        [done] = app.finished
        assert done.message.status == "complete" and done.error is None
        plan = done.message.plan or ""
        assert "coordinator -, w1 0-7+out → coordinator 0-7+out" in plan
        assert "failed over at" in plan and "regenerated" in plan and "worker w1" in plan
        assert "failed over at" in str(app.query(MessageView)[-1].meta.render())
        assert not notices(app)
    [row] = store.list()
    assert "failed over" in (store.open(row.id).messages[-1].plan or "")


async def test_reopening_renaming_and_deleting_stored_conversations(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    old = store.create("about layers")
    store.add_message(old.id, Message("user", "What is a layer?"))
    answer = Message("assistant", "A **slice** of the model.", tokens=6, tokens_per_s=12.0)
    answer.ttft_s, answer.plan = 0.3, "coordinator 0-4+out"
    store.add_message(old.id, answer)
    other = store.create("to delete")
    app = Host(store)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = pane_of(app)
        await pilot.press("ctrl+o")
        await eventually(lambda: isinstance(app.screen, ConversationsDialog))
        dialog = app.screen
        assert isinstance(dialog, ConversationsDialog)
        await eventually(lambda: len(dialog.rows) == 2)
        assert [r.id for r in dialog.rows] == [other.id, old.id]
        await pilot.press("delete")
        await eventually(lambda: [r.id for r in dialog.rows] == [old.id])
        await pilot.press("r", *"layers", "enter")
        await eventually(lambda: dialog.rows[0].title == "layers")
        await pilot.press("enter")
        await eventually(lambda: len(app.query(MessageView)) == 2)
        user, reply = app.query(MessageView)
        assert user.text == "What is a layer?" and "slice" in reply.text
        assert "12.0 tokens/s" in str(reply.meta.render())
        assert pane.session.conversation_id == old.id
        assert [m.content for m in pane.session.history()][-1] == "A **slice** of the model."
        await pilot.press("ctrl+y")
        assert app.clipboard == "A **slice** of the model."
        await pilot.press("ctrl+n")
        await eventually(lambda: not app.query(MessageView))
        assert pane.session.conversation is None
    assert [(r.id, r.title) for r in store.list()] == [(old.id, "layers")]


async def test_a_bad_store_path_is_shown_and_chat_still_works(
    quorum_dirs: dict[str, Path],
) -> None:
    (quorum_dirs["data"] / "conversations.sqlite3").mkdir()
    app = Host(None)
    async with app.run_test(size=(80, 24)):
        await eventually(lambda: bool(notices(app)))
        assert "Conversations will not be kept" in notices(app)[0]
        assert "is a directory" in notices(app)[0]
        assert pane_of(app).store is None
