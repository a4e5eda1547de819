"""A streaming client for OpenAI-compatible servers: typed deltas, time to first token, tokens/s.

Cancel a reply by cancelling the task that iterates it (or by leaving the `async for`): the HTTP
response is closed and the server stops generating. Every failure is a `ChatError` whose text
says what went wrong, including a server that dies mid-reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from quorum_tui.errors import QuorumError
from quorum_tui.wire import (
    DONE,
    PLAN_ROUTE,
    FailoverRecord,
    PlanBody,
    failovers_of,
    sse_data,
    sse_events,
)


class ChatError(QuorumError):
    """A reply could not be started or did not finish; the message says why."""


@dataclass(frozen=True)
class ChatMessage:
    """One message of the history sent to the server."""

    role: str
    content: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text (about one token)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The server ended the reply normally (it sent [DONE])."""

    finish_reason: str | None


StreamEvent = TextDelta | Finished


@dataclass
class ReplyStats:
    """Timing of one reply, measured on the client: valid while streaming and after."""

    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0

    def record(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens += 1

    @property
    def ttft_s(self) -> float | None:
        """Seconds from sending the request to the first piece of text."""
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token, like the engine's `done` event."""
        if self.first_token_at is None or self.last_token_at is None or self.tokens < 2:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.tokens - 1) / span if span > 0 else None


class ReplyStream:
    """One streamed reply: `async for event in reply`; `.text` and `.stats` as it goes."""

    def __init__(self, client: ChatClient, path: str, body: dict[str, Any]) -> None:
        self.client = client
        self.path = path
        self.body = body
        self.stats = ReplyStats()
        self.text = ""
        self.finish_reason: str | None = None
        self.finished = False
        self.failovers: tuple[FailoverRecord, ...] = ()
        """Coordinator restarts the reply lived through (Quorum's endpoint says)."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        url = self.client.url(self.path)
        self.stats = ReplyStats()
        try:
            async with self.client.http.stream("POST", url, json=self.body) as response:
                if response.status_code != 200:
                    raise ChatError(await _status_error(response, url))
                async for raw in sse_events(response.aiter_bytes()):
                    event = self._parse(raw)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, Finished):
                        return
        except httpx.ConnectError as exc:
            raise ChatError(
                f"cannot reach the model server at {url} ({_reason(exc)}): is a model running?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ChatError(
                f"the model server at {url} did not answer within "
                f"{self.client.read_timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise ChatError(_mid_reply(url, _reason(exc))) from exc
        raise ChatError(_mid_reply(url, "the stream ended without [DONE]"))

    def _parse(self, raw: bytes) -> StreamEvent | None:
        data = sse_data(raw)
        if data is None:
            return None
        if data == DONE:
            self.finished = True
            return Finished(self.finish_reason)
        try:
            chunk = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChatError(
                f"the model server sent something that is not JSON: {data[:80]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise ChatError(f"the model server sent a JSON {type(chunk).__name__}, not an event")
        if "error" in chunk:
            raise ChatError(f"the model server failed mid-reply: {_error_text(chunk)}")
        self.failovers = failovers_of(chunk) or self.failovers
        choices = chunk.get("choices") or [{}]
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if not text:
            return None
        self.stats.record(time.perf_counter())
        self.text += text
        return TextDelta(str(text))


class ChatClient:
    """An OpenAI-compatible API at `base_url` (for example http://127.0.0.1:8080/v1)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ChatError(
                f"{base_url!r} is not a model server URL: give one like http://127.0.0.1:8080/v1"
            )
        self.base_url = base
        self.read_timeout = read_timeout
        timeout = httpx.Timeout(connect_timeout, read=read_timeout)
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ReplyStream:
        """Stream a reply from /chat/completions."""
        body: dict[str, Any] = {"messages": [m.to_json() for m in messages], "stream": True}
        return ReplyStream(self, "chat/completions", _options(body, max_tokens, temperature, extra))

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ReplyStream:
        """Stream a plain continuation of `prompt` from /completions."""
        body: dict[str, Any] = {"prompt": prompt, "stream": True}
        return ReplyStream(self, "completions", _options(body, max_tokens, temperature, extra))

    async def models(self) -> list[str]:
        """The model ids the server lists."""
        url = self.url("models")
        try:
            response = await self.http.get(url)
        except httpx.HTTPError as exc:
            raise ChatError(f"cannot reach the model server at {url} ({_reason(exc)})") from exc
        if response.status_code != 200:
            raise ChatError(await _status_error(response, url))
        return [str(m.get("id")) for m in response.json().get("data", [])]

    async def served_plan(self) -> str | None:
        """The realized plan a Quorum coordinator reports at /quorum/plan, as one line."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self.http.get(f"{root}{PLAN_ROUTE}")
            body = response.json() if response.status_code == 200 else None
            return PlanBody.from_json(body).line() if isinstance(body, dict) else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
            return None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def served_by(plan: str | None, failovers: Sequence[FailoverRecord]) -> str | None:
    """The plan that served a reply, and every failover it lived through."""
    if not failovers:
        return plan
    steps = [failovers[0].plan_before or plan or "?"]
    notes = []
    for f in failovers:
        steps.append(f.plan_after or "?")
        at = f.when.rpartition("T")[2]
        notes.append(f"failed over at {at} after {f.after_tokens} tokens ({f.reason}; {f.resumed})")
    return " → ".join(steps) + " · " + " · ".join(notes)


def _options(
    body: dict[str, Any],
    max_tokens: int | None,
    temperature: float | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    body.update(extra or {})
    return body


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _mid_reply(url: str, why: str) -> str:
    return (
        f"the model server at {url} stopped mid-reply ({why}): "
        "the coordinator or one of its workers probably died"
    )


def _error_text(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        text = str(error.get("message", error)).split("  File ", 1)[0]
        return " ".join(text.split())[:300]
    return str(error or payload)[:200]


async def _status_error(response: httpx.Response, url: str) -> str:
    raw = await response.aread()
    try:
        detail = _error_text(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        detail = raw.decode(errors="replace").strip()[:200] or response.reason_phrase
    return f"the model server at {url} answered {response.status_code}: {detail}"
