"""How the gateway resumes a generation after a failover: the pure part, event by event."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quorum_tui.deploy.resume import REGENERATE_LIMIT, Diverged, Generation
from quorum_tui.wire import FailoverRecord, sse_events


def chunk(text: str, finish: str | None = None, ident: str = "cmpl-1") -> bytes:
    data = {"id": ident, "created": 1, "choices": [{"text": text, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def chat_chunk(text: str, finish: str | None = None) -> bytes:
    data = {"id": "chat-1", "choices": [{"delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def decoded(event: bytes | None) -> dict[str, Any]:
    assert event is not None
    return json.loads(event.strip()[5:])


def generation(kind: str = "completions", **body: Any) -> Generation:
    raw = json.dumps({"prompt": "P", "stream": True, **body}).encode()
    parsed = Generation.parse(kind, raw)
    assert parsed is not None
    return parsed


def fail(gen: Generation) -> None:
    gen.interrupted(
        FailoverRecord(at=0.0, after_tokens=0, reason="worker w2 died", plan_before="a")
    )


def test_requests_that_cannot_be_resumed_are_passed_through() -> None:
    assert Generation.parse("chat", b"not json") is None
    assert Generation.parse("chat", b"[1, 2]") is None
    assert Generation.parse("completions", b'{"prompt": "x", "n": 2}') is None


def test_the_first_attempt_passes_every_byte_through() -> None:
    gen = generation(temperature=0)
    for piece in (chunk("Hel"), chunk("lo"), b": keepalive\n\n"):
        assert gen.forward(piece) == piece
    assert gen.forward(b"data: [DONE]\n\n") == b"data: [DONE]\n\n" and gen.done


def test_a_greedy_reply_is_regenerated_and_what_the_client_has_is_dropped() -> None:
    gen = generation(temperature=0, max_tokens=10)
    for piece in ("The", " sea", " is"):
        gen.forward(chunk(piece))
    fail(gen)
    assert gen.resubmission() == gen.body, "the same request again"
    assert gen.failovers[0].after_tokens == 3 and gen.failovers[0].resumed == "regenerated"
    new = "cmpl-2"
    assert gen.forward(chunk("The s", ident=new)) is None
    out = decoded(gen.forward(chunk("ea is cal", ident=new)))
    assert out["choices"][0]["text"] == " cal" and out["id"] == "cmpl-1", "the client's id stays"
    final = decoded(gen.forward(chunk("m", "length", ident=new)))
    assert final["choices"][0]["text"] == "m"
    [record] = final["quorum"]["failovers"]
    assert record["reason"] == "worker w2 died" and record["resumed"] == "regenerated"
    assert gen.text == "The sea is calm"


def test_a_regenerated_reply_that_ends_where_the_client_is_sends_only_the_end() -> None:
    gen = generation(temperature=0)
    for piece in ("a", "b"):
        gen.forward(chunk(piece))
    fail(gen)
    gen.resubmission()
    assert gen.forward(chunk("a")) is None
    final = decoded(gen.forward(chunk("b", "stop")))
    assert final["choices"][0]["text"] == "" and final["choices"][0]["finish_reason"] == "stop"


def test_a_regenerated_reply_that_differs_raises_and_the_next_try_continues() -> None:
    gen = generation(temperature=0, max_tokens=10)
    for piece in ("one", " two"):
        gen.forward(chunk(piece))
    fail(gen)
    gen.resubmission()
    assert gen.forward(chunk("one")) is None
    with pytest.raises(Diverged):
        gen.forward(chunk(" three"))
    fail(gen)
    body = gen.resubmission()
    assert gen.mode == "continued" and body["prompt"] == "Pone two" and body["max_tokens"] == 8


def test_a_sampled_reply_continues_from_the_text_so_far() -> None:
    gen = generation(temperature=0.8, max_tokens=100)
    for piece in ("Once", " upon"):
        gen.forward(chunk(piece))
    fail(gen)
    body = gen.resubmission()
    assert body["prompt"] == "POnce upon" and body["max_tokens"] == 98
    assert gen.body["prompt"] == "P", "the original request is kept"
    assert gen.forward(chunk("")) is None, "an empty piece before the text is dropped"
    out = decoded(gen.forward(chunk(" a time", "length")))
    assert out["choices"][0]["text"] == " a time"
    assert out["quorum"]["failovers"][0]["resumed"] == "continued"


def test_a_long_greedy_reply_continues_rather_than_regenerating() -> None:
    gen = generation(temperature=0)
    for _ in range(REGENERATE_LIMIT + 1):
        gen.forward(chunk("x"))
    fail(gen)
    gen.resubmission()
    assert gen.mode == "continued"


def test_a_chat_reply_continues_as_the_assistants_partial_turn() -> None:
    messages = [{"role": "user", "content": "hi"}]
    gen = generation("chat", messages=messages, temperature=1.0, max_completion_tokens=50)
    gen.forward(chat_chunk("Hello"))
    gen.forward(chat_chunk(" there"))
    fail(gen)
    body = gen.resubmission()
    assert body["messages"] == [*messages, {"role": "assistant", "content": "Hello there"}]
    assert body["max_tokens"] == 48 and "max_completion_tokens" not in body
    final = decoded(gen.forward(chat_chunk("!", "stop")))
    assert final["choices"][0]["delta"]["content"] == "!"
    assert final["quorum"]["failovers"][0]["resumed"] == "continued"


def test_a_native_completion_continues_with_the_rest_of_its_budget() -> None:
    gen = generation("native", n_predict=20, temperature=0.5)
    gen.forward(b'data: {"content": "ab", "stop": false}\n\n')
    fail(gen)
    body = gen.resubmission()
    assert body["prompt"] == "Pab" and body["n_predict"] == 19
    final = decoded(gen.forward(b'data: {"content": "c", "stop": true}\n\n'))
    assert final["content"] == "c" and gen.done and "quorum" in final


def test_a_whole_reply_carries_its_failovers() -> None:
    gen = generation(stream=False)
    assert gen.whole(b'{"x": 1}') == b'{"x": 1}', "untouched without a failover"
    fail(gen)
    assert json.loads(gen.whole(b'{"x": 1}'))["quorum"]["failovers"][0]["plan_before"] == "a"


async def test_events_are_cut_at_blank_lines_whatever_the_chunks() -> None:
    async def chunks() -> Any:
        for part in (b"data: 1\n", b"\ndata: 2\n\nda", b"ta: 3\n\n", b"data: 4"):
            yield part

    assert [e async for e in sse_events(chunks())] == [
        b"data: 1\n\n",
        b"data: 2\n\n",
        b"data: 3\n\n",
        b"data: 4",
    ]
