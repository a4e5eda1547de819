"""One conversation in progress: what to send next and what to keep, shared by CLI and TUI."""

from __future__ import annotations

from quorum_tui.chat.client import ChatMessage, ReplyStats
from quorum_tui.chat.store import Conversation, ConversationStore, Message, title_from

SYSTEM_PROMPT = "You are a helpful assistant."
"""Sent first unless a conversation has its own: small instruct models answer far better
with a system message than without one (SmolLM2-135M names Paris only with one)."""


class ChatSession:
    """A conversation (stored when a store is given) and the history the model sees."""

    def __init__(
        self,
        store: ConversationStore | None = None,
        conversation: Conversation | None = None,
        system: str = SYSTEM_PROMPT,
    ) -> None:
        self.store = store
        self.conversation = conversation
        self.system = system
        self.messages: list[Message] = list(conversation.messages) if conversation else []

    @property
    def conversation_id(self) -> int | None:
        return self.conversation.id if self.conversation else None

    def history(self) -> list[ChatMessage]:
        """The messages to send: the system prompt (when the conversation has none of its
        own), then every prompt and every reply with text, in order."""
        sent = [
            ChatMessage(m.role, m.text)
            for m in self.messages
            if m.role in ("system", "user", "assistant") and m.text
        ]
        if self.system and not any(m.role == "system" for m in sent):
            sent.insert(0, ChatMessage("system", self.system))
        return sent

    def add_prompt(self, text: str) -> Message:
        """Record the user's prompt, creating the stored conversation on the first one."""
        if self.store is not None and self.conversation is None:
            self.conversation = self.store.create(title_from(text))
        return self._add(Message("user", text))

    def add_reply(self, text: str, stats: ReplyStats, status: str, plan: str | None) -> Message:
        """Record a reply (complete, stopped or error) with its timing and serving plan."""
        return self._add(reply_message(text, stats, status, plan))

    def _add(self, message: Message) -> Message:
        if self.store is not None and self.conversation is not None:
            self.store.add_message(self.conversation.id, message)
        self.messages.append(message)
        return message


def reply_message(text: str, stats: ReplyStats, status: str, plan: str | None) -> Message:
    """An assistant message carrying the reply's timing."""
    return Message(
        "assistant",
        text,
        status=status,
        tokens=stats.tokens,
        tokens_per_s=stats.tokens_per_s,
        ttft_s=stats.ttft_s,
        plan=plan,
    )


def describe_reply(message: Message) -> str:
    """'12.5 tokens/s · first token 0.21 s · 40 tokens · plan ... · stopped'."""
    parts = []
    if message.tokens_per_s is not None:
        parts.append(f"{message.tokens_per_s:.1f} tokens/s")
    if message.ttft_s is not None:
        parts.append(f"first token {message.ttft_s:.2f} s")
    if message.tokens is not None:
        parts.append(f"{message.tokens} token{'' if message.tokens == 1 else 's'}")
    if message.plan:
        parts.append(f"plan {message.plan}")
    if message.status != "complete":
        parts.append(message.status)
    return " · ".join(parts)
