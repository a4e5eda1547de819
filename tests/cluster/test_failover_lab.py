"""Failover when a host leaves the network without a word: no RST, its tunnel just goes quiet."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.deploy.deployment import Deployment, Target
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.lab.sshlab import SshLab


async def stream(http: httpx.AsyncClient, base: str, cut: Callable[[], None] | None) -> tuple:
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True, "logit_bias": {"2": -100.0}}  # fmt: skip
    text, final, pieces = [], {}, 0
    async with http.stream("POST", f"{base}/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            final = json.loads(line[6:])
            assert "error" not in final, final
            piece = final["choices"][0].get("text") or ""
            text.append(piece)
            pieces += bool(piece)
            if cut is not None and pieces == 30:
                cut()
    return "".join(text), final


async def test_a_host_cut_off_the_network_fails_over(
    lab: SshLab, make_model: Callable[..., Path]
) -> None:
    model = make_model(n_layers=8, n_embd=256, n_head=8, n_vocab=800, dtype="f16")
    near, far = lab.add("near"), lab.add("far")
    path = lab.cluster_file([near, far])
    path.write_text('server_args = "--alias lab-model"\n' + path.read_text())
    settings = EngineSettings(threads=1, slots=1)
    try:
        async with (
            Deployment(Target(cluster_file=path), settings) as deployment,
            httpx.AsyncClient(timeout=300) as http,
        ):
            prepared = await deployment.prepare(str(model), PlanRequest((0, 4, 4)))
            base = await deployment.start(prepared)
            models = (await http.get(f"{base}/v1/models")).json()
            assert models["data"][0]["id"] == "lab-model", "the cluster file's options"
            undisturbed, _ = await stream(http, base, None)
            text, final = await stream(http, base, far.link_down)
            assert text == undisturbed
            [failover] = final["quorum"]["failovers"]
            assert "worker far" in failover["reason"] and "unreachable" in failover["reason"]
            assert failover["plan_after"] == "coordinator -, near 0-7+out"
    finally:
        await down(load_inventory(path))
