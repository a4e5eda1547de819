"""The real trained model (SmolLM2-135M-Instruct, Q4_1): sharded greedy text equals one process.

llama.cpp's CPU backend may repack quantized weights for faster kernels in the coordinator's
own buffers; an RPC worker cannot, so the single-process baseline runs with repacking off
(`--no-repack`), the numerics every sharded stage has.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from quorum_tui.deploy.deployment import Deployment, Prepared
from quorum_tui.engine.completion import CompletionRequest
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.settings import EngineSettings

PROMPT = "The three most useful things to know about the ocean are"
TOKENS = 64


async def greedy(model: Path, plan: LayerPlan, repack: bool = True) -> str:
    out = io.StringIO()
    settings = EngineSettings(ctx=512, slots=1, threads=1, repack=repack)
    async with Deployment(settings=settings) as deployment:
        await deployment.start(Prepared(model, inspect_model(model), plan))
        result = await deployment.run(CompletionRequest(PROMPT, TOKENS), out)
    assert result.done.completion_tokens == TOKENS
    assert list(result.realized) == plan.assignment()
    return out.getvalue()


@pytest.fixture(scope="module")
def baseline(real_model_file: Path) -> str:
    import asyncio

    plan = LayerPlan.from_counts(30, [30], [])
    return asyncio.run(greedy(real_model_file, plan, repack=False))


def test_the_baseline_is_real_english(baseline: str) -> None:
    words = baseline.split()
    assert len(words) > 20
    assert sum(w.strip(".,:;").isalpha() for w in words) > 0.8 * len(words)


@pytest.mark.parametrize(
    "counts",
    [[0, 15, 15], [10, 10, 10], [5, 24, 1], [0, 10, 10, 10], [3, 9, 9, 9], [1, 1, 1, 27]],
    ids=lambda c: "split-" + "-".join(map(str, c)),
)
async def test_sharded_greedy_text_equals_one_process(
    real_model_file: Path, shared_workers: LocalCluster, baseline: str, counts: list[int]
) -> None:
    workers = shared_workers.refs[: len(counts) - 1]
    plan = LayerPlan.from_counts(30, counts, workers)
    assert await greedy(real_model_file, plan) == baseline
