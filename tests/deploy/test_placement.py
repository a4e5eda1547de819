"""Which tensors each worker holds, stages for a failover, and how much of its range is cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quorum_tui.deploy.failover import survivor_plan
from quorum_tui.deploy.placement import CacheCoverage, WeightsPlaced, staging_sets
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.weights import manifest
from quorum_tui.tui.layers_pane import cached_text

WORKERS = [WorkerRef(f"w{i}", f"10.0.0.{i}:50052") for i in (1, 2, 3)]
SHAPE = {"n_layers": 3, "n_embd": 1024, "n_ff": 4096, "n_head": 8, "n_head_kv": 2, "n_vocab": 512}


def test_staging_gives_each_worker_the_layers_a_neighbours_death_would_move_to_it(
    make_model: Callable[..., Path],
) -> None:
    model = make_model(**SHAPE)
    info, weights = inspect_model(model), manifest(model)
    plan = LayerPlan.from_counts(3, [0, 1, 1, 1], WORKERS)
    settings = EngineSettings(ctx=256, slots=1)
    wanted = staging_sets(weights, info, plan, [None] * 4, settings, None)
    for index, worker in enumerate(WORKERS):
        own = {t.fnv for t in weights.for_stage(plan, index + 1)}
        gains: set[str] = set()
        for dead in WORKERS:
            if dead == worker:
                continue
            after = survivor_plan(info, plan, [dead], [None] * 3, settings)
            if worker in after.workers:
                gains |= {t.fnv for t in weights.for_stage(after, after.workers.index(worker) + 1)}
        assert {t.fnv for t in wanted[worker]} == gains - own
    assert not wanted[WORKERS[2]], "nobody's death moves layers onto the last worker"
    assert {t.name for t in wanted[WORKERS[1]]} == {
        "blk.2.ffn_gate.weight", "blk.2.ffn_up.weight", "blk.2.ffn_down.weight"
    }, "w3's layer moves to w2, and the output layer's tensors are below the threshold"  # fmt: skip


def test_no_room_anywhere_stages_nothing(make_model: Callable[..., Path]) -> None:
    model = make_model(**SHAPE)
    info, weights = inspect_model(model), manifest(model)
    plan = LayerPlan.from_counts(3, [0, 1, 1, 1], WORKERS)
    tight = [None, *(2 * info.layer_bytes[0],) * 3]
    wanted = staging_sets(weights, info, plan, tight, EngineSettings(ctx=256, slots=1), None)
    assert all(not tensors for tensors in wanted.values())


def test_coverage_share_per_stage() -> None:
    coverage = CacheCoverage((10, 10, 10, 4), {WORKERS[0].endpoint: (10, 5, 0, 0)})
    plan = LayerPlan.from_counts(3, [0, 2, 1], WORKERS[:2])
    assert coverage.share(plan, 1) == pytest.approx(0.75)
    assert coverage.share(plan, 0) is None and coverage.share(plan, 2) is None
    assert str(cached_text(coverage, plan, 1)) == "75%"
    assert str(cached_text(coverage, plan, 2)) == "?" and str(cached_text(None, plan, 1)) == "?"
    assert str(cached_text(coverage, plan, 0)) == "-"
    nothing = CacheCoverage((0, 0, 0, 0), {WORKERS[0].endpoint: (0, 0, 0, 0)})
    assert nothing.share(plan, 1) is None, "nothing cacheable: nothing to say"


def test_placed_events_say_what_happened() -> None:
    mib = 1 << 20
    done = WeightsPlaced(WORKERS[0], "load", "/srv/models", 96 * mib, 96 * mib, 96 * mib, 0.4)
    assert done.describe() == (
        "w1: 96.0 MiB of 96.0 MiB of its layers in its tensor cache (96.0 MiB written from "
        "/srv/models in 0.4s)"
    )
    short = WeightsPlaced(WORKERS[0], "load", "", 0, 0, 96 * mib, 0.1, ("w1: no copy here",))
    assert short.describe().endswith("the coordinator pushes the rest; w1: no copy here")
