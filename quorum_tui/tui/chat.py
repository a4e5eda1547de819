"""The Chat pane: a prompt, replies streamed as Markdown, stop, timings, stored conversations."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message as TextualMessage
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker

from quorum_tui.chat.chunking import safe_cuts, split_markdown, split_open_block
from quorum_tui.chat.client import (
    ChatClient,
    ChatError,
    ReplyStats,
    ReplyStream,
    TextDelta,
    served_by,
)
from quorum_tui.chat.session import ChatSession, describe_reply, reply_message
from quorum_tui.chat.store import Conversation, ConversationInfo, ConversationStore, Message
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged
from quorum_tui.tui.markdown_pieces import MarkdownPieces

log = logging.getLogger(__name__)

NO_MODEL = "No model is running: Apply a plan on the Layers screen."
LIVE_EVERY = 0.25
CHUNK_CHARS = 800
"""A long reply is shown as Markdown pieces of about this many characters."""
FLUSH_EVERY = 0.1
"""Seconds between Markdown updates while a reply streams: tokens in between are batched."""
TAIL_LINES = 40
"""A block still being written (a code fence, a list) is cut when it grows past this many
lines, so that an update never renders more than about this much again."""


class MessageView(Vertical, can_focus=True):
    """One message: a header line (who, timings, plan) and its text.

    The text is one MarkdownPieces: finished Markdown in frozen pieces of up to CHUNK_CHARS,
    each rendered once, and while a reply streams the block still being written as its tail.
    Each time blocks complete they move out of the tail into a new piece, and a tail longer
    than TAIL_LINES is cut (see `split_open_block`), so an update costs the same at the start
    of a long reply as at its end.
    """

    DEFAULT_CSS = """
    MessageView { height: auto; margin: 0 0 1 0; padding: 0 1; }
    MessageView:focus { background: $boost; }
    MessageView .message-meta { color: $text-muted; height: auto; }
    MessageView .message-meta.user { color: $accent; }
    MessageView .message-meta.stopped, MessageView .message-meta.error { color: $warning; }
    """

    def __init__(self, message: Message, *, live: bool = False, model: str = "") -> None:
        super().__init__(classes=message.role)
        self.message = message
        self.model = model or "Model"
        """Who wrote an assistant message: the name the server gave its model."""
        self.live = live
        self.meta = Static(self._meta_text(), classes=f"message-meta {message.role}", markup=False)
        sources = [] if live else split_markdown(message.text, CHUNK_CHARS)
        self.body = MarkdownPieces(sources)
        self._streamed: list[str] = []

    def compose(self) -> ComposeResult:
        yield self.meta
        yield self.body

    @property
    def text(self) -> str:
        """The message's text (the reply so far while it streams)."""
        return "".join(self._streamed) if self.live else self.message.text

    @property
    def sources(self) -> list[str]:
        """The frozen pieces' Markdown."""
        return self.body.sources

    @property
    def tail_source(self) -> str:
        """The block still being written."""
        return self.body.tail

    def _meta_text(self) -> str:
        if self.message.role == "user":
            return "You"
        if self.live:
            return f"{self.model} · waiting for the first token…"
        detail = describe_reply(self.message)
        return f"{self.model} · {detail}" if detail else self.model

    def show_live(self, stats: ReplyStats) -> None:
        """Refresh the header with the reply's timing so far."""
        parts = [f"{stats.tokens} tokens"]
        if stats.tokens_per_s is not None:
            parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
        if stats.ttft_s is not None:
            parts.append(f"first token {stats.ttft_s:.2f} s")
        self.meta.update(f"{self.model} · streaming · " + " · ".join(parts))

    def write(self, text: str) -> None:
        """Add streamed text: blocks it completes are frozen, the open block is the tail."""
        self._streamed.append(text)
        candidate = self.body.tail + text
        cuts = safe_cuts(candidate)
        if cuts:
            self.body.append(split_markdown(candidate[: cuts[-1]], CHUNK_CHARS))
            candidate = candidate[cuts[-1] :]
        while (cut := split_open_block(candidate, TAIL_LINES)) is not None:
            done, candidate = cut
            self.body.append([done])
        self.body.set_tail(candidate)

    def finish(self, message: Message) -> None:
        """Freeze what is left and show the final timings (complete, stopped or error)."""
        self.message = message
        self.live = False
        self.meta.add_class(message.status)
        rest = self.body.tail
        self.body.set_tail("")
        self.body.append([rest])
        self.meta.update(self._meta_text())


class ChatNotice(Static):
    """An error or note shown in the conversation (not stored, not sent to the model)."""

    DEFAULT_CSS = """
    ChatNotice { height: auto; margin: 0 0 1 0; padding: 0 1; }
    ChatNotice.error { color: $error; border-left: thick $error; }
    ChatNotice.note { color: $text-muted; }
    """

    def __init__(self, text: str, *, error: bool = True) -> None:
        super().__init__(text, classes="error" if error else "note", markup=False)
        self.text = text


class ConversationsDialog(ModalScreen[int | None]):
    """Stored conversations: Enter opens, r renames, Delete removes; Esc closes."""

    DEFAULT_CSS = """
    ConversationsDialog { align: center middle; }
    ConversationsDialog > Vertical {
        width: 70; max-width: 95%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    ConversationsDialog OptionList { height: auto; max-height: 16; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_dialog", "Close", id="chat.dialog.close"),
        Binding("r", "rename", "Rename", id="chat.dialog.rename"),
        Binding("delete,d", "delete", "Delete", id="chat.dialog.delete"),
    ]

    def __init__(self, store: ConversationStore) -> None:
        super().__init__()
        self.store = store
        self.rows: list[ConversationInfo] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Conversations", classes="dialog-title")
            yield OptionList(id="conversation-list")
            yield Input(placeholder="new title, Enter to rename", id="rename-input")
            yield Static(
                "Enter opens · r renames · Delete removes · Esc closes", classes="dialog-body"
            )

    def on_mount(self) -> None:
        self.query_one("#rename-input").display = False
        self.refresh_list()

    @work(exclusive=True, group="conversations", exit_on_error=False)
    async def refresh_list(self) -> None:
        try:
            self.rows = await asyncio.to_thread(self.store.list)
        except QuorumError as exc:
            self.notify(str(exc), severity="error")
            return
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(
            Option(f"{row.title}  ({row.messages} messages)", id=str(row.id)) for row in self.rows
        )
        if self.rows:
            options.highlighted = 0
        else:
            options.add_option(Option("No stored conversations yet", disabled=True))
        options.focus()

    def _highlighted(self) -> int | None:
        option = self.query_one(OptionList).highlighted_option
        return int(option.id) if option is not None and option.id else None

    @on(OptionList.OptionSelected)
    def _open(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(int(event.option.id))

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)

    def action_rename(self) -> None:
        chosen = self._highlighted()
        if chosen is None:
            return
        field = self.query_one("#rename-input", Input)
        field.value = next((r.title for r in self.rows if r.id == chosen), "")
        field.display = True
        field.focus()

    @on(Input.Submitted, "#rename-input")
    async def _rename(self, event: Input.Submitted) -> None:
        event.stop()
        chosen = self._highlighted()
        field = self.query_one("#rename-input", Input)
        field.display = False
        if chosen is not None:
            try:
                await asyncio.to_thread(self.store.rename, chosen, event.value)
            except QuorumError as exc:
                self.notify(str(exc), severity="error")
        self.refresh_list()

    async def action_delete(self) -> None:
        chosen = self._highlighted()
        if chosen is None:
            return
        try:
            await asyncio.to_thread(self.store.delete, chosen)
        except QuorumError as exc:
            self.notify(str(exc), severity="error")
        self.refresh_list()


class ChatPane(Vertical):
    """Chat with the model the coordinator serves; replies stream in and are kept in SQLite."""

    DEFAULT_CSS = """
    ChatPane { height: 1fr; }
    ChatPane #chat-endpoint { height: auto; color: $text-muted; padding: 0 1; }
    ChatPane #chat-endpoint.down { color: $warning; }
    ChatPane #chat-log { height: 1fr; scrollbar-gutter: stable; }
    ChatPane #chat-input { margin-top: 0; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop reply", id="chat.stop"),
        Binding("ctrl+n", "new_conversation", "New chat", id="chat.new"),
        Binding("ctrl+o", "conversations", "Conversations", id="chat.conversations"),
        Binding("ctrl+y", "copy_message", "Copy", id="chat.copy"),
    ]

    class ReplyFinished(TextualMessage):
        """A reply ended: complete, stopped, or error (then `error` says why)."""

        def __init__(self, message: Message, error: str | None) -> None:
            super().__init__()
            self.message = message
            self.error = error

    def __init__(self, store: ConversationStore | None = None, **kwargs: Any) -> None:
        """A pane that stores conversations in `store` (default: the data dir's SQLite file)."""
        super().__init__(**kwargs)
        self.store = store
        self.session = ChatSession(store)
        self.url: str | None = None
        self.model = "Model"
        """The served model's name, as the server lists it (the file's, or --alias)."""
        self.plan_summary = ""
        self.note = ""
        self.max_tokens = 512
        self.request_options: dict[str, Any] = {}
        self.client: ChatClient | None = None
        self.reply: ReplyStream | None = None
        self._reply_worker: Worker[None] | None = None
        self._stop_status: str | None = None
        self._stop_reason: str | None = None
        self._streaming = False

    def compose(self) -> ComposeResult:
        yield Static(NO_MODEL, id="chat-endpoint", classes="down", markup=False)
        yield VerticalScroll(id="chat-log")
        yield Input(placeholder="Message the model (Enter sends, Esc stops)", id="chat-input")

    def on_mount(self) -> None:
        self._show_endpoint()
        if self.store is None:
            self._open_default_store()

    @work(group="chat-store", exit_on_error=False)
    async def _open_default_store(self) -> None:
        try:
            store = await asyncio.to_thread(ConversationStore)
        except QuorumError as exc:
            await self._notice(f"Conversations will not be kept: {exc}")
            return
        self.store = store
        if self.session.store is None and not self.session.messages:
            self.session = ChatSession(store)

    @property
    def generating(self) -> bool:
        """True while a reply streams."""
        return self._reply_worker is not None and self._reply_worker.is_running

    def set_endpoint(
        self, url: str | None, plan_summary: str, note: str = "", model: str = ""
    ) -> None:
        """Send prompts to `url` (an OpenAI-compatible base like http://127.0.0.1:PORT/v1),
        served with the plan `plan_summary`; None means no coordinator is running. `note`
        is shown under the endpoint (whether the model needs sharding at all); `model` is the
        name the server gives its model."""
        if model:
            self.model = model
        old = self.client
        if url != self.url:
            self.client = ChatClient(url) if url else None
            if old is not None and self.is_attached:
                self.run_worker(old.aclose(), group="chat-close", exit_on_error=False)
        self.url = url
        self.plan_summary = plan_summary
        self.note = note
        self._show_endpoint()

    def report_error(self, text: str) -> None:
        """Show a coordinator failure in the pane; a reply in progress ends as an error,
        and the conversation is kept."""
        if self._cancel_stream("error", text):
            return
        self.run_worker(self._notice(text), group="chat-notice", exit_on_error=False)

    def _show_endpoint(self) -> None:
        if not self.is_mounted:
            return
        line = self.query_one("#chat-endpoint", Static)
        if self.url is None:
            line.update(NO_MODEL)
            line.add_class("down")
            return
        plan = f" · plan {self.plan_summary}" if self.plan_summary else ""
        note = f"\n{self.note}" if self.note else ""
        line.update(f"{self.model} at {self.url}{plan}{note}")
        line.remove_class("down")

    async def _notice(self, text: str, *, error: bool = True) -> None:
        log = self.query_one("#chat-log", VerticalScroll)
        await log.mount(ChatNotice(text, error=error))
        log.scroll_end(animate=False)

    @on(Input.Submitted, "#chat-input")
    async def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        await self.send(event.value)

    async def send(self, prompt: str) -> None:
        """Send `prompt` and stream the reply (what Enter does)."""
        prompt = prompt.strip()
        if not prompt:
            return
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return
        if self.client is None:
            await self._notice(NO_MODEL)
            return
        self.query_one("#chat-input", Input).value = ""
        self._stop_status = self._stop_reason = None
        self._reply_worker = self.run_worker(
            self._stream_reply(self.client, prompt),
            group="chat-reply",
            exclusive=True,
            exit_on_error=False,
        )

    async def _stream_reply(self, client: ChatClient, prompt: str) -> None:
        chat_log = self.query_one("#chat-log", VerticalScroll)
        session = self.session
        try:
            user = await asyncio.to_thread(session.add_prompt, prompt)
        except QuorumError as exc:
            user = Message("user", prompt)
            session.messages.append(user)
            await self._notice(f"This conversation is not being kept: {exc}")
        plan = self.plan_summary or None
        reply_view = reply_message("", ReplyStats(), "complete", plan)
        view = MessageView(reply_view, live=True, model=self.model)
        await chat_log.mount_all([MessageView(user), view])
        chat_log.anchor()
        reply = client.chat(
            session.history(), max_tokens=self.max_tokens, extra=dict(self.request_options)
        )
        self.reply = reply
        status, error = "complete", None
        self._streaming = True
        pending: list[str] = []
        flushed = shown = time.monotonic()
        try:
            async for event in reply:
                if not isinstance(event, TextDelta):
                    continue
                pending.append(event.text)
                now = time.monotonic()
                if now - flushed < FLUSH_EVERY:
                    continue
                if now - shown >= LIVE_EVERY:
                    view.show_live(reply.stats)
                    shown = now
                view.write("".join(pending))
                pending.clear()
                flushed = time.monotonic()
        except ChatError as exc:
            status, error = "error", str(exc)
        except Exception as exc:
            log.exception("a chat reply failed")
            status, error = "error", f"the reply failed: {type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            if self._stop_status is None:
                raise
            status, error = self._stop_status, self._stop_reason
        finally:
            self._streaming = False
            with logged(log, "writing the rest of a reply"):
                view.write("".join(pending))
        await self._finish(session, view, reply, status, served_by(plan, reply.failovers), error)

    async def _finish(
        self,
        session: ChatSession,
        view: MessageView,
        reply: ReplyStream,
        status: str,
        plan: str | None,
        error: str | None,
    ) -> None:
        message = reply_message(reply.text, reply.stats, status, plan)
        if reply.text or status != "error":
            try:
                message = await asyncio.to_thread(
                    session.add_reply, reply.text, reply.stats, status, plan
                )
            except QuorumError as exc:
                session.messages.append(message)
                await self._notice(f"This reply is not being kept: {exc}")
        if view.is_attached:
            view.finish(message)
            if error:
                await self._notice(error)
        self.post_message(self.ReplyFinished(message, error))

    def action_stop(self) -> None:
        """Stop the reply that is streaming; its text so far is kept, marked as stopped."""
        self._cancel_stream("stopped", None)

    def _cancel_stream(self, status: str, reason: str | None) -> bool:
        if not self._streaming or self._reply_worker is None or self._stop_status is not None:
            return False
        self._stop_status, self._stop_reason = status, reason
        self._reply_worker.cancel()
        return True

    async def _stop_and_wait(self) -> None:
        worker = self._reply_worker
        self.action_stop()
        if worker is not None and worker.is_running:
            with logged(log, "waiting for a stopped reply"):
                await worker.wait()

    async def action_new_conversation(self) -> None:
        """Start an empty conversation (a reply in progress is stopped and kept)."""
        await self._stop_and_wait()
        self.session = ChatSession(self.store)
        await self.query_one("#chat-log", VerticalScroll).remove_children()
        self.query_one("#chat-input", Input).focus()

    def action_conversations(self) -> None:
        """Open the list of stored conversations."""
        if self.store is None:
            self.notify("Conversations are not being stored.", severity="warning")
            return
        self.app.push_screen(ConversationsDialog(self.store), self._chosen)

    def _chosen(self, conversation_id: int | None) -> None:
        if conversation_id is not None:
            self.open_conversation(conversation_id)

    @work(group="chat-open", exclusive=True, exit_on_error=False)
    async def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation and continue it."""
        if self.store is None:
            return
        await self._stop_and_wait()
        try:
            conversation = await asyncio.to_thread(self.store.open, conversation_id)
        except QuorumError as exc:
            await self._notice(str(exc))
            return
        await self.show_conversation(conversation)

    async def show_conversation(self, conversation: Conversation) -> None:
        """Replace what the pane shows with `conversation`."""
        self.session = ChatSession(self.store, conversation)
        log = self.query_one("#chat-log", VerticalScroll)
        await log.remove_children()
        await log.mount_all([MessageView(m, model=self.model) for m in conversation.messages])
        log.scroll_end(animate=False)
        self.query_one("#chat-input", Input).focus()

    def action_copy_message(self) -> None:
        """Copy the focused message, or else the last reply, to the clipboard."""
        focused = self.app.focused
        if isinstance(focused, MessageView):
            text = focused.text
        else:
            replies = [m for m in self.session.messages if m.role == "assistant"]
            if not replies:
                self.notify("Nothing to copy yet.", severity="warning")
                return
            text = replies[-1].text
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied {len(text)} characters.")

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.aclose()
