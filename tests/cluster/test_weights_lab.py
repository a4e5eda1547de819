"""Weights stay home on real SSH hosts: a host loads its layers from its own copy, the layers a
failover would move to a host are staged there in the background (streamed over its SSH
connection when it has no copy), and the failover then sends none of its large tensors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from quorum_tui.bench.scale import link_bytes
from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.deploy.deployment import Deployment, Target
from quorum_tui.deploy.events import DeployEvent, FailedOver
from quorum_tui.deploy.placement import WeightsPlaced
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.ggufheader import read_header
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.weights import HASH_THRESHOLD, manifest
from quorum_tui.lab.sshlab import SshLab
from tests.cluster.helpers import quorum

SHAPE = {"n_layers": 2, "n_embd": 1024, "n_ff": 4096, "n_head": 8, "n_head_kv": 2, "n_vocab": 512}


async def answer(http: httpx.AsyncClient, base: str) -> str:
    body = {"prompt": "one two", "max_tokens": 8, "temperature": 0}
    reply = await http.post(f"{base}/v1/completions", json=body)
    return str(reply.json()["choices"][0]["text"])


async def test_home_loads_and_staged_failover_send_no_large_tensor(
    lab: SshLab, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    model = make_model(**SHAPE)
    small = sum(t.n_bytes for t in read_header(model).tensors if t.n_bytes <= HASH_THRESHOLD)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / model.name).hardlink_to(model)
    first = lab.add("first", env={"QUORUM_CACHE_DIR": str(tmp_path / "first-cache")})
    second = lab.add("second", env={"QUORUM_CACHE_DIR": str(tmp_path / "second-cache")})
    path = lab.cluster_file([first, second], extra={"second": {"models_dir": str(shelf)}})
    seen: list[DeployEvent] = []
    settings = EngineSettings(threads=1, slots=1, ctx=256)
    try:
        async with (
            Deployment(Target(cluster_file=path), settings, on_event=seen.append) as deployment,
            httpx.AsyncClient(timeout=300) as http,
        ):
            prepared = await deployment.prepare(str(model), PlanRequest((0, 1, 1)))
            base = await deployment.start(prepared)
            weights = manifest(model)
            placed = {e.worker.name: e for e in seen if isinstance(e, WeightsPlaced)}
            assert placed["first"].cached == placed["first"].written == 0, "no copy: pushed"
            loaded = placed["second"]
            assert loaded.purpose == "load" and loaded.source == str(shelf)
            assert loaded.written == loaded.cached == loaded.total
            assert loaded.total == sum(t.size for t in weights.for_stage(prepared.plan, 2))
            before = await answer(http, base)

            await asyncio.wait_for(deployment.weights.staged.wait(), 120)
            staged = [e for e in seen if isinstance(e, WeightsPlaced) and e.purpose == "staging"]
            onto_first = next(e for e in staged if e.worker.name == "first")
            assert onto_first.source == "the coordinator", onto_first
            assert onto_first.cached == onto_first.total > 0

            host = next(r for r in deployment.pool.host_results() if r.host.name == "second")
            assert host.pid is not None
            children = subprocess.run(["pgrep", "-P", str(host.pid)], capture_output=True,
                                      text=True).stdout.split()  # fmt: skip
            sent = link_bytes(lab)
            for pid in children:
                os.kill(int(pid), signal.SIGKILL)
            assert await answer(http, base) == before, "the failover it sets off answers alike"
            [failover] = [e for e in seen if isinstance(e, FailedOver)]
            assert failover.plan.summary() == "coordinator -, first 0-1+out"
            failover_bytes = link_bytes(lab) - sent
            assert failover_bytes < small + (4 << 20), (failover_bytes, small)

        cache = tmp_path / "second-cache" / "rpc-cache"
        victim = next(p for p in sorted(cache.iterdir()) if len(p.name) == 16)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 1
        victim.write_bytes(data)
        done = quorum("cache", "verify", "--config", str(path), "second", "--json")
        assert done.returncode == 1, "a bad file found is a failure to report"
        assert json.loads(done.stdout)["second"]["bad"] == [victim.name]
        assert not victim.exists()
        listed = json.loads(quorum("cache", "list", "--config", str(path), "--json").stdout)
        assert [m["model"] for m in listed["second"]["models"]] == [model.name]
        assert listed["first"]["models"][0]["files"] == len(weights.tensors)
        done = quorum("cache", "clear", "--config", str(path), "first", "--model", model.name)
        assert done.returncode == 0 and f"removed {len(weights.tensors)} files" in done.stdout
        assert not [p for p in (tmp_path / "first-cache" / "rpc-cache").iterdir()
                    if len(p.name) == 16]  # fmt: skip
    finally:
        await down(load_inventory(path))
