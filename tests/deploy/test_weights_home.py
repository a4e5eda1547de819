"""Weights stay home: a worker whose tensor cache was filled from its own copy of the model is
sent none of the large tensors by a real llama-server load (stock llama.cpp, counted on the
wire), and answers as a pushed load does."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from quorum_tui.cluster.caches import HostCache, Source
from quorum_tui.deploy.deployment import Deployment, Prepared
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.ggufheader import read_header
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.weights import HASH_THRESHOLD, manifest
from tests.countingproxy import CountingProxy

SHAPE = {"n_layers": 2, "n_embd": 1024, "n_ff": 4096, "n_head": 8, "n_head_kv": 2, "n_vocab": 512}
"""Feed-forward tensors of 16 MiB (over the threshold), attention ones of 4 MiB (under)."""


async def load_and_answer(model: Path, endpoint: str) -> str:
    info = inspect_model(model)
    plan = LayerPlan.from_counts(info.n_layers, [0, 2], [WorkerRef("w1", endpoint)])
    async with Deployment(settings=EngineSettings(threads=1, ctx=256, slots=1)) as deployment:
        base = await deployment.start(Prepared(model, info, plan))
        async with httpx.AsyncClient(timeout=120) as http:
            body = {"prompt": "one two", "max_tokens": 8, "temperature": 0}
            reply = await http.post(f"{base}/v1/completions", json=body)
    return str(reply.json()["choices"][0]["text"])


async def test_a_cache_filled_from_the_hosts_copy_means_no_large_tensor_crosses_the_link(
    make_model: Callable[..., Path], local_cluster: LocalCluster, tmp_path: Path
) -> None:
    model = make_model(**SHAPE)
    header = read_header(model)
    large = sum(t.n_bytes for t in header.tensors if t.n_bytes > HASH_THRESHOLD)
    small = sum(t.n_bytes for t in header.tensors if t.n_bytes <= HASH_THRESHOLD)
    assert large > 3 * small, "the model should have most bytes in large tensors, as real ones"
    cache = tmp_path / "rpc-cache"
    worker = local_cluster.add("w1", cache=cache, wait=True)

    with CountingProxy(worker.endpoint) as wire:
        pushed_text = await load_and_answer(model, wire.endpoint)
        pushed = wire.to_worker
    assert pushed > large
    written_by_llama = sorted(p.name for p in cache.iterdir())

    shutil.rmtree(cache)
    cache.mkdir()
    home = tmp_path / "host-models"
    home.mkdir()
    (home / model.name).hardlink_to(model)
    weights = manifest(model)
    filled = await HostCache("w1", local=cache).fill(
        weights, weights.tensors, Source("dir", str(home))
    )
    assert filled.written == len(weights.tensors) and filled.bytes == large
    assert (
        sorted(p.name for p in cache.iterdir() if not p.name.startswith(("quorum", ".")))
        == written_by_llama
    ), "Quorum names the files as llama.cpp does"

    with CountingProxy(worker.endpoint) as wire:
        home_text = await load_and_answer(model, wire.endpoint)
        home_bytes = wire.to_worker
    assert home_text == pushed_text
    assert home_bytes < small + (2 << 20), (home_bytes, small)
