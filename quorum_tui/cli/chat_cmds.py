"""`quorum chat`: talk to an OpenAI-compatible server, and manage the stored conversations."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any, TextIO

from quorum_tui.chat.client import ChatClient, ChatError, ReplyStream
from quorum_tui.chat.session import SYSTEM_PROMPT, ChatSession, describe_reply, reply_message
from quorum_tui.chat.store import ConversationStore
from quorum_tui.errors import QuorumError

DEFAULT_URL = "http://127.0.0.1:8080/v1"
URL_ENV = "QUORUM_CHAT_URL"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a served model (one prompt or a REPL); list and manage conversations",
    )
    p.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"OpenAI-compatible base URL (default: ${URL_ENV} or {DEFAULT_URL})",
    )
    p.add_argument("-p", "--prompt", help="send one prompt and exit (default: a REPL)")
    p.add_argument("-n", "--max-tokens", type=int, default=512)
    p.add_argument("--temp", type=float, help="sampling temperature (default: the server's)")
    p.add_argument("--completion", action="store_true", help="plain /completions, not chat")
    p.add_argument("--conversation", type=int, metavar="ID", help="continue a stored one")
    p.add_argument("--no-save", action="store_true", help="do not store this conversation")
    p.add_argument(
        "--system",
        default=SYSTEM_PROMPT,
        help=f"the system prompt ('' for none; default {SYSTEM_PROMPT!r})",
    )
    manage = p.add_mutually_exclusive_group()
    manage.add_argument("--list", action="store_true", help="list stored conversations")
    manage.add_argument("--show", type=int, metavar="ID", help="print a stored conversation")
    manage.add_argument("--rename", nargs=2, metavar=("ID", "TITLE"))
    manage.add_argument("--delete", type=int, metavar="ID")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise QuorumError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    if args.list:
        return list_conversations(ConversationStore())
    if args.show is not None:
        return show_conversation(ConversationStore(), args.show)
    if args.rename:
        return rename_conversation(ConversationStore(), *args.rename)
    if args.delete is not None:
        ConversationStore().delete(args.delete)
        print(f"deleted conversation {args.delete}")
        return 0
    return asyncio.run(chat(args))


def list_conversations(store: ConversationStore, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    rows = store.list()
    if not rows:
        print("no stored conversations", file=out)
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated))
        print(f"{row.id:>5}  {when}  {row.messages:>3} messages  {row.title}", file=out)
    return 0


def show_conversation(store: ConversationStore, conversation_id: int) -> int:
    conversation = store.open(conversation_id)
    print(f"# {conversation.title}")
    for message in conversation.messages:
        print(f"\n[{message.role}]")
        print(message.text)
        if message.role == "assistant":
            print(f"({describe_reply(message)})")
    return 0


def rename_conversation(store: ConversationStore, conversation_id: str, title: str) -> int:
    try:
        number = int(conversation_id)
    except ValueError:
        raise QuorumError(f"{conversation_id!r} is not a conversation id (a number)") from None
    store.rename(number, title)
    print(f"renamed conversation {number}")
    return 0


async def chat(args: argparse.Namespace) -> int:
    store = None if args.no_save or args.completion else ConversationStore()
    conversation = None
    if args.conversation is not None:
        conversation = (store or ConversationStore()).open(args.conversation)
    session = ChatSession(store, conversation, args.system)
    async with ChatClient(args.url) as client:
        plan = await client.served_plan()
        if args.prompt is not None:
            await turn(client, session, args, args.prompt, plan)
            return 0
        print(f"chatting with {args.url} (Ctrl-C stops a reply, Ctrl-D quits)", file=sys.stderr)
        while True:
            try:
                prompt = await asyncio.to_thread(input, "> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if prompt.strip():
                try:
                    await turn(client, session, args, prompt, plan)
                except ChatError as exc:
                    print(f"quorum: {exc}", file=sys.stderr)


async def turn(
    client: ChatClient, session: ChatSession, args: argparse.Namespace, prompt: str, plan: Any
) -> None:
    """Send one prompt, stream the reply to stdout (Ctrl-C stops it), keep it."""
    if not prompt.strip():
        raise QuorumError("the prompt is empty")
    if args.completion:
        reply = client.complete(prompt, max_tokens=args.max_tokens, temperature=args.temp)
    else:
        session.add_prompt(prompt)
        reply = client.chat(session.history(), max_tokens=args.max_tokens, temperature=args.temp)
    task = asyncio.ensure_future(_print_reply(reply))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    status = "complete"
    try:
        await task
    except asyncio.CancelledError:
        status = "stopped"
    except ChatError:
        status = "error"
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        print(flush=True)
        if reply.text or status != "error":
            message = reply_message(reply.text, reply.stats, status, plan)
            if not args.completion:
                message = session.add_reply(reply.text, reply.stats, status, plan)
            print(f"({describe_reply(message)})", file=sys.stderr)


async def _print_reply(reply: ReplyStream) -> None:
    with contextlib.suppress(BrokenPipeError):
        async for event in reply:
            text = getattr(event, "text", "")
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
