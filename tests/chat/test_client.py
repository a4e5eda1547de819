"""The streaming client against a real coordinator serving a synthetic model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from quorum_tui.chat.client import ChatClient, ChatError, ChatMessage, Finished, TextDelta
from quorum_tui.engine.localcluster import free_port
from tests.served import NO_EOS, Served, eventually, served

HI = [ChatMessage("user", "Hello there")]


async def test_chat_streams_typed_deltas_then_finished(server: Served) -> None:
    async with ChatClient(server.url) as client:
        reply = client.chat(HI, max_tokens=8, extra=NO_EOS)
        events = [event async for event in reply]
    *deltas, last = events
    assert deltas and all(isinstance(d, TextDelta) and d.text for d in deltas)
    assert last == Finished("length")
    assert reply.finished
    assert reply.text == "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert reply.stats.tokens == len(deltas)
    assert reply.stats.ttft_s is not None and reply.stats.ttft_s > 0
    assert reply.stats.tokens_per_s is not None and reply.stats.tokens_per_s > 0


async def test_completions_stream_too(server: Served) -> None:
    async with ChatClient(server.url + "/") as client:
        reply = client.complete("Once upon a time", max_tokens=5, temperature=0.0, extra=NO_EOS)
        events = [event async for event in reply]
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "length"
    assert 1 <= reply.stats.tokens <= 5
    assert reply.text


async def test_served_plan_and_models(server: Served, tiny_model: Path) -> None:
    async with ChatClient(server.url) as client:
        assert await client.served_plan() == server.plan.summary()
        assert await client.models() == [tiny_model.name]


async def test_cancelling_stops_the_reply(server: Served) -> None:
    async with ChatClient(server.url) as client:
        reply = client.chat(HI, max_tokens=200, extra=NO_EOS)
        seen: list[str] = []

        async def consume() -> None:
            async for event in reply:
                if isinstance(event, TextDelta):
                    seen.append(event.text)

        task = asyncio.create_task(consume())
        await eventually(lambda: len(seen) >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not reply.finished
        assert reply.stats.tokens == len(seen) < 200
        after = client.chat(HI, max_tokens=3, extra=NO_EOS)
        events = await asyncio.wait_for(_collect(after), 120)
        assert isinstance(events[-1], Finished)


async def _collect(reply: object) -> list[object]:
    return [event async for event in reply]  # type: ignore[attr-defined]


async def test_server_error_status_is_named(server: Served) -> None:
    async with ChatClient(server.url) as client:
        with pytest.raises(ChatError, match=r"answered 400: .*max_tokens"):
            await _collect(client.chat(HI, extra={"max_tokens": "many"}))
        missing = ChatClient(server.url + "/nowhere")
        with pytest.raises(ChatError, match="answered 404"):
            await _collect(missing.chat(HI, max_tokens=2))
        await missing.aclose()


async def test_dead_server_mid_reply_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    async with (
        served(tiny_model) as running,
        ChatClient(running.url) as client,
    ):
        reply = client.chat(HI, max_tokens=200, extra=NO_EOS)
        with pytest.raises(ChatError, match="stopped mid-reply") as caught:
            async for event in reply:
                if isinstance(event, TextDelta) and reply.stats.tokens == 2:
                    coordinator = running.deployment.coordinator
                    assert coordinator is not None and coordinator.proc is not None
                    coordinator.proc.kill()
        assert "coordinator" in str(caught.value)
        assert reply.stats.tokens >= 2
        assert not reply.finished


async def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with ChatClient(url, connect_timeout=2) as client:
        with pytest.raises(ChatError, match=r"cannot reach the model server .*is a model running"):
            await _collect(client.chat(HI))
        with pytest.raises(ChatError, match="cannot reach"):
            await client.models()
        assert await client.served_plan() is None


@pytest.mark.parametrize("url", ["", "127.0.0.1:8080", "ftp://host/v1"])
def test_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ChatError, match="not a model server URL"):
        ChatClient(url)


def _sse(*lines: str) -> httpx.MockTransport:
    body = "".join(f"{line}\n\n" for line in lines).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


CHUNK = 'data: {"choices": [{"delta": {"content": "%s"}, "finish_reason": null}]}'


async def test_stream_without_done_is_an_error() -> None:
    async with ChatClient("http://model/v1", transport=_sse(CHUNK % "a", CHUNK % "b")) as client:
        reply = client.chat(HI)
        with pytest.raises(ChatError, match=r"stopped mid-reply \(the stream ended without"):
            await _collect(reply)
        assert reply.text == "ab"


async def test_garbage_and_error_chunks_are_errors() -> None:
    async with ChatClient("http://model/v1", transport=_sse("data: {oops")) as client:
        with pytest.raises(ChatError, match="not JSON"):
            await _collect(client.chat(HI))
    failing = _sse(CHUNK % "a", 'data: {"error": {"message": "context full"}}')
    async with ChatClient("http://model/v1", transport=failing) as client:
        with pytest.raises(ChatError, match="failed mid-reply: context full"):
            await _collect(client.chat(HI))


async def test_comments_and_empty_deltas_are_skipped() -> None:
    transport = _sse(": keep-alive", CHUNK % "", CHUNK % "x", "data: [DONE]")
    async with ChatClient("http://model/v1", transport=transport) as client:
        reply = client.chat(HI)
        assert await _collect(reply) == [TextDelta("x"), Finished(None)]
        assert reply.stats.tokens == 1 and reply.stats.tokens_per_s is None
