"""The SQLite conversation store and the session that fills it."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorum_tui.chat.client import ReplyStats
from quorum_tui.chat.session import SYSTEM_PROMPT, ChatSession, describe_reply
from quorum_tui.chat.store import ConversationStore, Message, default_path, title_from
from quorum_tui.errors import QuorumError


def test_default_path_is_under_the_data_dir(quorum_dirs: dict[str, Path]) -> None:
    store = ConversationStore()
    assert store.path == default_path() == quorum_dirs["data"] / "conversations.sqlite3"
    assert store.path.is_file()


def test_create_list_open_rename_delete(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    first = store.create("first")
    second = store.create("second")
    store.add_message(first.id, Message("user", "hello"))
    answer = Message("assistant", "hi!", status="stopped", tokens=3, tokens_per_s=9.5)
    answer.ttft_s, answer.plan = 0.25, "coordinator 0-4+out"
    reply = store.add_message(first.id, answer)
    assert reply.id is not None
    rows = store.list()
    assert [(r.id, r.title, r.messages) for r in rows] == [
        (first.id, "first", 2),
        (second.id, "second", 0),
    ]
    opened = store.open(first.id)
    assert [(m.role, m.text, m.status) for m in opened.messages] == [
        ("user", "hello", "complete"),
        ("assistant", "hi!", "stopped"),
    ]
    assert opened.messages[1].tokens_per_s == 9.5 and opened.messages[1].ttft_s == 0.25
    assert opened.messages[1].plan == "coordinator 0-4+out"
    store.rename(second.id, "  renamed\n title ")
    assert store.open(second.id).title == "renamed title"
    store.delete(first.id)
    assert [r.id for r in store.list()] == [second.id]
    with pytest.raises(QuorumError, match=f"no conversation {first.id}"):
        store.open(first.id)


def test_conversations_persist_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "c.sqlite3"
    session = ChatSession(ConversationStore(path))
    session.add_prompt("What is a layer?")
    stats = ReplyStats(started=0.0, first_token_at=0.5, last_token_at=2.5, tokens=5)
    session.add_reply("A slice of the model.", stats, "complete", "coordinator 0, w1 1-4+out")
    assert session.conversation_id is not None
    again = ConversationStore(path).open(session.conversation_id)
    assert again.title == "What is a layer?"
    reply = again.messages[-1]
    assert (reply.tokens, reply.ttft_s, reply.tokens_per_s) == (5, 0.5, 2.0)
    assert describe_reply(reply) == (
        "2.0 tokens/s · first token 0.50 s · 5 tokens · plan coordinator 0, w1 1-4+out"
    )
    resumed = ChatSession(ConversationStore(path), again)
    assert [(m.role, m.content) for m in resumed.history()] == [
        ("system", SYSTEM_PROMPT),
        ("user", "What is a layer?"),
        ("assistant", "A slice of the model."),
    ]


def test_missing_conversations_and_bad_values(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    calls = [
        lambda: store.rename(42, "x"),
        lambda: store.delete(42),
        lambda: store.add_message(42, Message("user", "x")),
    ]
    for call in calls:
        with pytest.raises(QuorumError, match=r"no conversation 42.*quorum chat --list"):
            call()
    conversation = store.create()
    with pytest.raises(QuorumError, match="title cannot be empty"):
        store.rename(conversation.id, "   ")
    with pytest.raises(QuorumError, match="unknown message status 'done'"):
        store.add_message(conversation.id, Message("assistant", "x", status="done"))


def test_bad_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(QuorumError, match="is a directory"):
        ConversationStore(tmp_path)
    not_db = tmp_path / "junk.sqlite3"
    not_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QuorumError, match=r"cannot use the conversation store .*junk\.sqlite3"):
        ConversationStore(not_db)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QuorumError, match="QUORUM_DATA_DIR"):
        ConversationStore(blocker / "sub" / "c.sqlite3")


def test_session_without_store_and_titles() -> None:
    session = ChatSession()
    session.add_prompt("hi")
    session.add_reply("", ReplyStats(), "error", None)
    assert session.conversation is None
    assert [m.content for m in session.history()] == [SYSTEM_PROMPT, "hi"]
    assert [m.content for m in ChatSession(system="").history()] == []
    own = ChatSession(system="be brief")
    own.messages.append(Message("system", "be kind"))
    assert [m.content for m in own.history()] == ["be kind"]
    assert title_from("  a\n b  ") == "a b"
    assert title_from("") == "New conversation"
    long = title_from("word " * 40)
    assert len(long) == 48 and long.endswith("…")
