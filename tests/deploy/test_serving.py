"""Serving like llama-server: many clients at once, queueing, disconnects, keys, errors.

The real trained model (SmolLM2-135M-Instruct, Q4_1) is served over two real workers, split
10/10/10, as a user would serve it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quorum_tui.chat.session import SYSTEM_PROMPT
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.wire import parse_metrics
from tests.served import NO_EOS, Served, eventually, served, served_in_thread

PROMPTS = [
    "Write two sentences about the sea.",
    "What is the capital of France?",
    "Name three colours.",
    "Say hello in French.",
    "Count from one to five.",
    "What do bees make?",
]


@pytest.fixture(scope="module")
def real(real_model_file: Path, shared_workers: LocalCluster) -> Iterator[Served]:
    with served_in_thread(
        real_model_file,
        workers=shared_workers.refs[:2],
        counts=[10, 10, 10],
        slots=4,
        server_args=["--metrics"],
    ) as running:
        yield running


async def chat(client: httpx.AsyncClient, url: str, prompt: str, tokens: int = 40) -> dict:
    """One streamed chat completion: its text and finish reason, read as a client would."""
    body = {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    text, finish, done = [], None, False
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            choice = json.loads(data)["choices"][0]
            text.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "finish": finish, "done": done}


async def test_concurrent_clients_all_get_the_reply_they_get_alone(real: Served) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        alone = [await chat(client, real.url, p) for p in PROMPTS[:4]]
        together = await asyncio.gather(*(chat(client, real.url, p) for p in PROMPTS[:4]))
    for solo, concurrent in zip(alone, together, strict=True):
        assert solo["done"] and solo["finish"] in ("stop", "length") and solo["text"]
        assert concurrent == solo


async def test_requests_beyond_the_slots_wait_and_complete(real: Served) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        alone = [await chat(client, real.url, p, 12) for p in PROMPTS]
        together = await asyncio.gather(*(chat(client, real.url, p, 12) for p in PROMPTS))
        metrics = parse_metrics((await client.get(f"{real.url.removesuffix('/v1')}/metrics")).text)
    assert len(PROMPTS) > 4
    assert together == alone
    assert all(r["done"] and r["finish"] in ("stop", "length") for r in together)
    assert metrics.processing == 0


async def test_the_chat_template_answers_a_question(real: Served) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        reply = await chat(client, real.url, "What is the capital of France?", 24)
    assert "Paris" in reply["text"]


async def test_quorum_routes_and_llama_server_routes(real: Served, real_model_file: Path) -> None:
    base = real.url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        plan = (await client.get("/quorum/plan")).json()
        assert plan["realized"] == [0] * 10 + [1] * 10 + [2] * 11
        assert [s["layers"] for s in plan["stages"]] == [[0, 9], [10, 19], [20, 29]]
        models = (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == real_model_file.name
        assert (await client.get("/health")).json()["status"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert "llamacpp:n_decode_total" in metrics
        plain = await client.post(
            "/v1/completions",
            content=json.dumps({"prompt": "One, two,", "max_tokens": 4, "temperature": 0}),
            headers={"Content-Type": "text/plain"},
        )
        assert plain.status_code == 200 and plain.json()["choices"][0]["text"]
        for reply in (
            await client.post("/v1/chat/completions", json={"messages": "nope"}),
            await client.post("/v1/completions", content=b"{not json"),
            await client.get("/v1/nowhere"),
        ):
            assert reply.status_code >= 400
            error = reply.json()["error"]
            assert error["message"] and "Traceback" not in reply.text


async def test_a_client_that_disconnects_frees_its_slot(
    slow_model: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(1)
    async with (
        served(slow_model, local_cluster.refs, slots=1, server_args=["--metrics"]) as one_slot,
        httpx.AsyncClient(timeout=120) as client,
    ):
        base = one_slot.url.removesuffix("/v1")
        body = {"prompt": "Once", "max_tokens": 1500, "stream": True, **NO_EOS}
        async with client.stream("POST", f"{one_slot.url}/completions", json=body) as response:
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data: ")
                if chunks == 5:
                    break

        async def idle() -> bool:
            metrics = parse_metrics((await client.get(f"{base}/metrics")).text)
            return metrics.processing == 0

        deadline = asyncio.get_running_loop().time() + 30
        while not await idle():
            assert asyncio.get_running_loop().time() < deadline, "the slot was never freed"
            await asyncio.sleep(0.1)
        after = await client.post(
            f"{one_slot.url}/completions", json={"prompt": "Once", "max_tokens": 3}
        )
        assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3


async def test_an_api_key_is_required_when_set(tiny_model: Path) -> None:
    async with (
        served(tiny_model, api_key="sesame") as keyed,
        httpx.AsyncClient(timeout=60) as client,
    ):
        base = keyed.url.removesuffix("/v1")
        for path in ("/v1/models", "/quorum/plan", "/metrics"):
            refused = await client.get(base + path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["type"] == "authentication_error"
            wrong = await client.get(base + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        ok = {"Authorization": "Bearer sesame"}
        assert (await client.get(f"{base}/v1/models", headers=ok)).status_code == 200
        assert (await client.get(f"{base}/quorum/plan", headers=ok)).status_code == 200
        assert (await client.get(f"{base}/health")).status_code == 200


async def test_nothing_serving_is_a_503_with_the_reason(tiny_model: Path) -> None:
    async with served(tiny_model) as running, httpx.AsyncClient(timeout=60) as client:
        url = running.url
        await running.deployment.stop_coordinator()
        await eventually(lambda: not running.deployment.serving)
        for reply in (
            await client.post(f"{url}/completions", json={"prompt": "hi", "max_tokens": 2}),
            await client.get(f"{url.removesuffix('/v1')}/quorum/plan"),
        ):
            assert reply.status_code == 503
            assert "stopped" in reply.json()["error"]["message"]
