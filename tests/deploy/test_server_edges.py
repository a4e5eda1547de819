"""The gateway at its edges, as llama-server behaves: options passed through, CORS preflights,
public paths, /metrics, clients that give up, several bind addresses."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from quorum_tui.deploy.deployment import Prepared
from quorum_tui.deploy.events import DeployEvent, Serving
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.wire import parse_metrics
from tests.served import NO_EOS, eventually, served

KEY = {"Authorization": "Bearer sesame"}


async def test_llama_server_options_reach_the_coordinator(
    tiny_model: Path, local_cluster: LocalCluster
) -> None:
    local_cluster.start(1)
    seen: list[DeployEvent] = []
    args = ["--alias", "tinyllama-2", "--n-predict", "3", "--metrics", "--no-slots"]
    async with (
        served(tiny_model, local_cluster.refs, server_args=args) as running,
        httpx.AsyncClient(timeout=60) as http,
    ):
        running.deployment.on_event = seen.append
        base = running.url.removesuffix("/v1")
        models = (await http.get(f"{running.url}/models")).json()
        assert [m["id"] for m in models["data"]] == ["tinyllama-2"]
        reply = (await http.post(f"{base}/completion", json={"prompt": "a", **NO_EOS})).json()
        assert reply["tokens_predicted"] == 3
        assert (await http.get(f"{base}/slots")).status_code == 501
        assert "llamacpp:n_decode_total" in (await http.get(f"{base}/metrics")).text
        await running.deployment.stop_coordinator()
        info = inspect_model(tiny_model)
        await running.deployment.start(Prepared(tiny_model, info, running.plan))
        serving = [e for e in seen if isinstance(e, Serving)]
        assert serving and serving[-1].model == "tinyllama-2"
        again = (await http.get(f"{running.url}/models")).json()
        assert again["data"][0]["id"] == "tinyllama-2"


async def test_preflights_and_public_paths_need_no_key(tiny_model: Path) -> None:
    async with (
        served(tiny_model, api_key="sesame") as keyed,
        httpx.AsyncClient(timeout=60) as http,
    ):
        base = keyed.url.removesuffix("/v1")
        preflight = {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        }
        for phase in ("serving", "stopped"):
            reply = await http.options(f"{base}/v1/chat/completions", headers=preflight)
            assert reply.status_code == 200, (phase, reply.text)
            assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "POST" in reply.headers["Access-Control-Allow-Methods"]
            assert reply.headers["Access-Control-Allow-Credentials"] == "true"
            if phase == "serving":
                for path in ("/health", "/v1/health"):
                    assert (await http.get(base + path)).status_code == 200, path
                refused = await http.get(f"{base}/v1/models", headers={"Origin": "https://x"})
                assert refused.status_code == 401
                assert refused.json()["error"] == {
                    "code": 401, "message": "Invalid API Key", "type": "authentication_error",
                }  # fmt: skip
                assert refused.headers["Access-Control-Allow-Origin"]
                await keyed.deployment.stop_coordinator()
        stopped = await http.post(f"{base}/v1/completions", json={"prompt": "x"}, headers=KEY)
        assert stopped.status_code == 503
        assert set(stopped.json()["error"]) == {"code", "message", "type"}
        assert stopped.headers["Access-Control-Allow-Origin"] == "*"


async def test_metrics_are_for_clients_only_when_asked_for(tiny_model: Path) -> None:
    async with (
        served(tiny_model, api_key="sesame") as keyed,
        httpx.AsyncClient(timeout=60) as http,
    ):
        url = f"{keyed.url.removesuffix('/v1')}/metrics"
        assert (await http.get(url)).status_code == 401
        off = await http.get(url, headers=KEY)
        assert off.status_code == 501
        assert off.json()["error"]["type"] == "not_supported_error"
        assert "--metrics" in off.json()["error"]["message"]


async def test_a_client_that_gives_up_on_a_whole_reply_frees_its_slot(
    slow_model: Path, local_cluster: LocalCluster
) -> None:
    """A non-streaming request sends nothing until its end; its client leaving must still
    cancel it (a streaming one: tests/deploy/test_serving.py)."""
    local_cluster.start(1)
    async with (
        served(slow_model, local_cluster.refs, slots=1, server_args=["--metrics"]) as one,
        httpx.AsyncClient(timeout=60) as http,
    ):
        base = one.url.removesuffix("/v1")
        body = {"prompt": "Once", "n_predict": 3000, **NO_EOS}
        with pytest.raises(httpx.ReadTimeout):
            async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=0.5)) as impatient:
                reply = await impatient.post(f"{base}/completion", json=body)
                pytest.fail(f"the reply came whole: {reply.text[:80]}")
        gave_up = asyncio.get_running_loop().time()

        async def busy() -> bool:
            metrics = parse_metrics((await http.get(f"{base}/metrics")).text)
            return bool(metrics.processing)

        # llama-server looks for a closed connection after a quiet second with no other
        # results (a /metrics request is one), so look no more often than that.
        while await asyncio.sleep(1.5, True) and await busy():
            assert asyncio.get_running_loop().time() - gave_up < 6, "the slot is still busy"
        after = await http.post(f"{base}/completion", json={"prompt": "Once", "n_predict": 2})
        assert after.status_code == 200 and after.json()["tokens_predicted"] == 2


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_several_bind_addresses_each_serve(tiny_model: Path) -> None:
    other = "::1" if ipv6_loopback() else "127.0.0.2"
    async with served(tiny_model, host=f"127.0.0.1,{other}") as running:
        port = httpx.URL(running.url).port
        host = f"[{other}]" if ":" in other else other
        async with httpx.AsyncClient(timeout=30) as http:
            for base in (f"http://127.0.0.1:{port}", f"http://{host}:{port}"):
                assert (await http.get(f"{base}/health")).json()["status"] == "ok", base
        await eventually(lambda: running.deployment.serving)


async def test_cors_origins_are_llama_servers_to_decide(tiny_model: Path) -> None:
    async with (
        served(tiny_model, server_args=["--cors-origins", "localhost"]) as running,
        httpx.AsyncClient(timeout=60) as http,
    ):
        url = running.url + "/chat/completions"
        evil = await http.options(url, headers={"Origin": "http://evil.com"})
        assert evil.status_code == 200 and "Access-Control-Allow-Origin" not in evil.headers
        local = await http.options(url, headers={"Origin": "http://localhost:3000"})
        assert local.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        models = await http.get(f"{running.url}/models", headers={"Origin": "http://evil.com"})
        assert "Access-Control-Allow-Origin" not in models.headers
