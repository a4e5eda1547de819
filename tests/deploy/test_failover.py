"""Failover: a worker dies mid-reply, and the reply completes on the survivors.

The real model (SmolLM2-135M-Instruct) is served over three real workers; the test kills one
while a 160-token greedy stream is flowing, and the client must receive the same text as an
undisturbed run, through the same connection.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from quorum_tui.deploy import deployment as deployment_module
from quorum_tui.deploy.deployment import Deployment, Prepared
from quorum_tui.deploy.events import DeployEvent, FailedOver, Phase, WorkerBack
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.probe import ProbeResult
from quorum_tui.engine.settings import EngineSettings

TOKENS = 160
PROMPT = "The history of the lighthouse begins"


@asynccontextmanager
async def deployed(
    model: Path, cluster: LocalCluster, counts: list[int], **options: Any
) -> AsyncIterator[tuple[Deployment, str, list[DeployEvent]]]:
    info = inspect_model(model)
    plan = LayerPlan.from_counts(info.n_layers, counts, cluster.refs)
    seen: list[DeployEvent] = []
    settings = EngineSettings(threads=1, server_args=tuple(options.pop("server_args", ())))
    deployment = Deployment(settings=settings, on_event=seen.append, **options)
    async with deployment:
        base = await deployment.start(Prepared(model, info, plan))
        yield deployment, base, seen


async def stream(
    http: httpx.AsyncClient, base: str, prompt: str = PROMPT, kill: Any = None, at: int = 40
) -> tuple[str, dict[str, Any], bool]:
    """A greedy stream's text, its final chunk, and whether [DONE] came; `kill()` after
    `at` pieces."""
    body = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    text, last, done, pieces = [], {}, False, 0
    async with http.stream("POST", f"{base}/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                last = json.loads(line[6:])
                assert "error" not in last, last
                piece = last["choices"][0].get("text") or ""
                text.append(piece)
                pieces += bool(piece)
                if kill is not None and pieces == at:
                    kill()
    return "".join(text), last, done


async def test_a_worker_killed_mid_reply_and_the_reply_completes_undisturbed(
    real_model_file: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(3)
    victim = local_cluster.workers[1]
    async with (
        deployed(real_model_file, local_cluster, [0, 10, 10, 10]) as (_, base, seen),
        httpx.AsyncClient(timeout=300) as http,
    ):
        undisturbed, _, _ = await stream(http, base)
        text, final, done = await stream(http, base, kill=lambda: victim.kill(signal.SIGKILL))
        assert done and final["choices"][0]["finish_reason"] == "length"
        assert text == undisturbed
        [failover] = final["quorum"]["failovers"]
        assert failover["resumed"] == "regenerated" and failover["after_tokens"] >= 40
        assert f"worker w2 ({victim.endpoint}) is unreachable" in failover["reason"]
        assert failover["plan_before"] == "coordinator -, w1 0-9, w2 10-19, w3 20-29+out"
        assert failover["plan_after"] == "coordinator -, w1 0-19, w3 20-29+out"
        assert [type(e) for e in seen if isinstance(e, FailedOver)] == [FailedOver]
        again, _, done = await stream(http, base)
        assert done and again == undisturbed, "the endpoint keeps serving"
        plan = (await http.get(f"{base}/quorum/plan")).json()
        assert plan["away"] == ["w2"] and plan["realized"][10:20] == [1] * 10


async def test_two_workers_dying_at_once_and_concurrent_streams_all_fail_over(
    real_model_file: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(3)
    prompts = [PROMPT, "Once upon a time, a river", "The best way to learn to cook"]

    def kill_two() -> None:
        for worker in local_cluster.workers[1:]:
            worker.kill(signal.SIGKILL)

    async with (
        deployed(real_model_file, local_cluster, [0, 10, 10, 10]) as (_, base, _),
        httpx.AsyncClient(timeout=300) as http,
    ):
        alone = [(await stream(http, base, p))[0] for p in prompts]
        runs = await asyncio.gather(
            stream(http, base, prompts[0], kill=kill_two, at=30),
            stream(http, base, prompts[1]),
            stream(http, base, prompts[2]),
        )
    for (text, final, done), undisturbed in zip(runs, alone, strict=True):
        assert done and text == undisturbed
        [failover] = final["quorum"]["failovers"]
        assert failover["plan_after"] == "coordinator -, w1 0-29+out"


async def test_survivors_too_small_end_the_reply_with_what_is_missing(
    real_model_file: Path, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_cluster.start(2)
    probe_all = deployment_module.probe_all

    async def small(endpoints: list[str], timeout: float = 3.0) -> list[ProbeResult]:
        results = await probe_all(endpoints, timeout)
        return [r if not r.ok else ProbeResult(r.endpoint, "ok", "", r.version, (), 0.1)
                for r in results]  # fmt: skip

    # Room for the coordinator's own share (the embeddings), not for a worker's layers.
    monkeypatch.setattr(deployment_module, "local_free", lambda: 40 << 20)
    monkeypatch.setattr(deployment_module, "probe_all", small)
    async with (
        deployed(real_model_file, local_cluster, [0, 15, 15]) as (deployment, base, _),
        httpx.AsyncClient(timeout=300) as http,
    ):
        body = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "stream": True}
        lines = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("POST", f"{base}/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if len([x for x in lines if x.startswith("data: ")]) == 20:
                        local_cluster.workers[1].kill(signal.SIGKILL)
        events = [line for line in lines if line.startswith("data: ")]
        assert "data: [DONE]" not in events
        error = json.loads(events[-1][6:])["error"]["message"]
        assert "cannot hold the model" in error and "short" in error and "w2" in error
        deadline = time.monotonic() + 30
        while deployment.phase != Phase.WAITING:
            assert time.monotonic() < deadline, deployment.phase
            await asyncio.sleep(0.05)
        assert deployment.reason is not None and "no failover" in deployment.reason
        refused = await http.post(f"{base}/v1/completions", json={"prompt": "x"})
        assert refused.status_code == 503 and "cannot hold" in refused.json()["error"]["message"]


async def test_a_worker_that_comes_back_rejoins_after_its_quiet_period(
    real_model_file: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(2)
    victim = local_cluster.workers[1]
    async with (
        deployed(
            real_model_file, local_cluster, [0, 15, 15], rejoin_after=1.0,
            server_args=["--alias", "smol", "-ctk", "q8_0"],
        ) as (deployment, base, seen),
        httpx.AsyncClient(timeout=300) as http,
    ):  # fmt: skip
        undisturbed, _, _ = await stream(http, base)
        text, _, _ = await stream(http, base, kill=lambda: victim.kill(signal.SIGKILL))
        assert text == undisturbed
        assert deployment.away and deployment.away[0].name == "w2"
        models = (await http.get(f"{base}/v1/models")).json()
        assert models["data"][0]["id"] == "smol", "the failover's coordinator lost --alias"
        local_cluster.restart(victim)
        deadline = time.monotonic() + 60
        while deployment.away or not deployment.serving:
            assert time.monotonic() < deadline, "the worker never rejoined"
            await asyncio.sleep(0.2)
        assert any(isinstance(e, WorkerBack) and e.worker.name == "w2" for e in seen)
        plan = (await http.get(f"{base}/quorum/plan")).json()
        assert plan["summary"] == "coordinator -, w1 0-14, w2 15-29+out" and plan["away"] == []
        again, _, _ = await stream(http, base)
        assert again == undisturbed


async def test_the_text_so_far_tokenizes_back_to_the_tokens_that_made_it(
    real_model_file: Path, local_cluster: LocalCluster
) -> None:
    """The round trip a continued reply rests on: the prompt plus the generated text, tokenized
    again, is the prompt's tokens followed by exactly the generated ones, so the resubmitted
    request carries the same tokens the lost coordinator had."""
    local_cluster.start(2)
    async with (
        deployed(real_model_file, local_cluster, [0, 15, 15]) as (_, base, _),
        httpx.AsyncClient(timeout=300) as http,
    ):
        body = {"prompt": PROMPT, "n_predict": TOKENS, "temperature": 0, "ignore_eos": True,
                "return_tokens": True}  # fmt: skip
        reply = (await http.post(f"{base}/completion", json=body)).json()
        generated, text = reply["tokens"], reply["content"]
        assert len(generated) == TOKENS

        async def tokens(content: str) -> list[int]:
            answer = await http.post(f"{base}/tokenize", json={"content": content})
            return list(answer.json()["tokens"])

        prompt_tokens = await tokens(PROMPT)
        for cut in (1, 40, 100, TOKENS):
            so_far = await http.post(f"{base}/detokenize", json={"tokens": generated[:cut]})
            assert await tokens(PROMPT + so_far.json()["content"]) == (
                prompt_tokens + generated[:cut]
            ), f"after {cut} tokens"
        assert so_far.json()["content"] == text


async def test_a_continued_reply_resumes_from_the_text_so_far(
    real_model_file: Path, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the regenerate limit a greedy reply is continued from prompt plus text: it still
    ends as the undisturbed run did, and says how it resumed."""
    monkeypatch.setattr("quorum_tui.deploy.resume.REGENERATE_LIMIT", 0)
    local_cluster.start(2)
    victim = local_cluster.workers[1]
    async with (
        deployed(real_model_file, local_cluster, [0, 15, 15]) as (_, base, _),
        httpx.AsyncClient(timeout=300) as http,
    ):
        undisturbed, _, _ = await stream(http, base)
        text, final, done = await stream(http, base, kill=lambda: victim.kill(signal.SIGKILL))
    assert done and final["choices"][0]["finish_reason"] == "length"
    [failover] = final["quorum"]["failovers"]
    assert failover["resumed"] == "continued" and failover["after_tokens"] >= 40
    assert failover["plan_after"] == "coordinator -, w1 0-29+out"
    assert text == undisturbed
