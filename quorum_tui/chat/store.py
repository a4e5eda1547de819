"""Conversations kept in SQLite under the data dir: list, open, rename, delete.

Every call opens its own short connection, so a store can be used from worker threads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quorum_tui import paths
from quorum_tui.errors import QuorumError

FILENAME = "conversations.sqlite3"
STATUSES = ("complete", "stopped", "error")
TITLE_CHARS = 48

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    tokens INTEGER,
    tokens_per_s REAL,
    ttft_s REAL,
    plan TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def default_path() -> Path:
    return paths.data_dir() / FILENAME


@dataclass
class Message:
    """One message; replies carry their timing and the plan that served them."""

    role: str
    text: str
    created: float = field(default_factory=time.time)
    status: str = "complete"
    tokens: int | None = None
    tokens_per_s: float | None = None
    ttft_s: float | None = None
    plan: str | None = None
    id: int | None = None


@dataclass
class ConversationInfo:
    """A row of the conversation list."""

    id: int
    title: str
    created: float
    updated: float
    messages: int


@dataclass
class Conversation:
    """A conversation with all its messages, oldest first."""

    id: int
    title: str
    created: float
    updated: float
    messages: list[Message] = field(default_factory=list)


def title_from(text: str) -> str:
    """A one-line title from the first prompt."""
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line or "New conversation"
    return line[: TITLE_CHARS - 1].rstrip() + "…"


class ConversationStore:
    """The SQLite file of conversations (default: data_dir()/conversations.sqlite3)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.path.is_dir():
                raise QuorumError(
                    f"the conversation store {self.path} is a directory: "
                    "remove it or set QUORUM_DATA_DIR to another place"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise self._error(exc) from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            with conn:
                yield conn
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()

    def _error(self, exc: BaseException) -> QuorumError:
        return QuorumError(
            f"cannot use the conversation store {self.path}: {exc}; "
            "check the path and its permissions, or set QUORUM_DATA_DIR to another place"
        )

    def create(self, title: str = "New conversation") -> Conversation:
        """A new, empty conversation."""
        now = time.time()
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, created, updated) VALUES (?, ?, ?)",
                (title, now, now),
            )
            new_id = int(cur.lastrowid or 0)
        return Conversation(new_id, title, now, now)

    def list(self) -> list[ConversationInfo]:
        """Every conversation, the most recently used first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(m.id) FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id "
                "GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
            ).fetchall()
        return [ConversationInfo(*row) for row in rows]

    def open(self, conversation_id: int) -> Conversation:
        """A conversation and its messages; QuorumError if there is no such conversation."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, title, created, updated FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                raise self._missing(conversation_id)
            messages = conn.execute(
                "SELECT role, text, created, status, tokens, tokens_per_s, ttft_s, plan, id "
                "FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return Conversation(row[0], row[1], row[2], row[3], [Message(*m) for m in messages])

    def add_message(self, conversation_id: int, message: Message) -> Message:
        """Append a message (its id is filled in) and mark the conversation as used."""
        if message.status not in STATUSES:
            raise QuorumError(f"unknown message status {message.status!r}")
        with self._connect() as conn:
            self._require(conn, conversation_id)
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, text, created, status, tokens, "
                "tokens_per_s, ttft_s, plan) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    message.role,
                    message.text,
                    message.created,
                    message.status,
                    message.tokens,
                    message.tokens_per_s,
                    message.ttft_s,
                    message.plan,
                ),
            )
            conn.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?",
                (max(time.time(), message.created), conversation_id),
            )
        message.id = int(cur.lastrowid or 0)
        return message

    def rename(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise QuorumError("a conversation title cannot be empty")
        with self._connect() as conn:
            self._require(conn, conversation_id)
            conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
            )

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        with self._connect() as conn:
            self._require(conn, conversation_id)
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def _require(self, conn: sqlite3.Connection, conversation_id: int) -> None:
        row = conn.execute(
            "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise self._missing(conversation_id)

    def _missing(self, conversation_id: int) -> QuorumError:
        return QuorumError(
            f"there is no conversation {conversation_id} in {self.path}: "
            "`quorum chat --list` shows the stored ones"
        )
