"""`quorum chat`: one-shot prompts, continuing and managing stored conversations."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from quorum_tui.chat.store import ConversationStore
from quorum_tui.cli import main
from quorum_tui.engine.localcluster import free_port
from tests.served import Served


def test_one_shot_streams_stores_and_continues(
    server: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "--url", server.url, "-p", "Tell me a story", "-n", "6"]) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    assert "tokens/s" in err and "first token" in err
    assert f"plan {server.plan.summary()}" in err
    [row] = ConversationStore().list()
    assert (row.title, row.messages) == ("Tell me a story", 2)
    stored = ConversationStore().open(row.id).messages[1]
    assert stored.text == out.strip("\n") and stored.plan == server.plan.summary()

    args = ["chat", "--url", server.url, "-p", "And then?", "-n", "4", "--conversation"]
    assert main([*args, str(row.id)]) == 0
    roles = [m.role for m in ConversationStore().open(row.id).messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    capsys.readouterr()

    assert main(["chat", "--list"]) == 0
    assert "4 messages  Tell me a story" in capsys.readouterr().out
    assert main(["chat", "--rename", str(row.id), "Stories"]) == 0
    assert main(["chat", "--show", str(row.id)]) == 0
    shown = capsys.readouterr().out
    assert "# Stories" in shown and "[user]\nAnd then?" in shown
    assert main(["chat", "--delete", str(row.id)]) == 0
    assert ConversationStore().list() == []


def test_completion_mode_and_no_save(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--url", server.url, "--completion", "-p", "Once", "-n", "3"]) == 0
    assert main(["chat", "--url", server.url, "--no-save", "-p", "Hi", "-n", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert ConversationStore().list() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:{port}/v1", "-p", "hi"], "cannot reach the model server"),
        (["--url", "localhost:8080", "-p", "hi"], "not a model server URL"),
        (["-n", "0", "-p", "hi"], "--max-tokens must be at least 1"),
        (["--show", "7"], "no conversation 7"),
        (["--delete", "7"], "no conversation 7"),
        (["--rename", "seven", "x"], "'seven' is not a conversation id"),
        (["--conversation", "7", "-p", "hi"], "no conversation 7"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(port=free_port()) for a in args]
    assert main(["chat", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quorum: ") and message in err
    assert err.count("\n") == 1


def test_repl_keeps_one_conversation(server: Served) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quorum_tui", "chat", "--url", server.url, "-n", "3"],
        input="first question\n\nsecond question\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("first token") == 2
    [row] = ConversationStore().list()
    messages = ConversationStore().open(row.id).messages
    assert [(m.role, m.text) for m in messages if m.role == "user"] == [
        ("user", "first question"),
        ("user", "second question"),
    ]
    assert len(messages) == 4
