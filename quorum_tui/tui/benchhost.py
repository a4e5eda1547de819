"""The app `quorum bench tui` runs headless: the Chat pane alone, reporting finished replies."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult

from quorum_tui.chat.store import ConversationStore
from quorum_tui.tui.chat import ChatPane
from quorum_tui.tui.heap import freeze_startup_heap, thaw_heap


class ChatBenchApp(App[None]):
    """A ChatPane in an otherwise empty app; each finished reply lands in `finished`."""

    def __init__(self, store: ConversationStore) -> None:
        super().__init__()
        self.store = store
        self.finished: asyncio.Queue[ChatPane.ReplyFinished] = asyncio.Queue()
        self.settled = asyncio.Event()
        """Set once start-up is over (its heap frozen, as the Quorum app does)."""

    def compose(self) -> ComposeResult:
        yield ChatPane(self.store)

    def on_mount(self) -> None:
        self.call_after_refresh(self._settle)

    def _settle(self) -> None:
        freeze_startup_heap()
        self.settled.set()

    def on_unmount(self) -> None:
        thaw_heap()

    def on_chat_pane_reply_finished(self, event: ChatPane.ReplyFinished) -> None:
        self.finished.put_nowait(event)
