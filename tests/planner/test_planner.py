"""The planner on described clusters: memory, speed, size, and the exact solver."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import stage_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import (
    ClusterProfile,
    CostModel,
    StageProfile,
    brute_force,
    explain,
    solve,
    solve_exact,
    solve_knapsack,
)
from quorum_tui.errors import QuorumError

MB = 1 << 20


def model(
    n_layers: int = 8,
    layer: int = 100 * MB,
    layers: Sequence[int] | None = None,
    n_embd: int = 4096,
    n_vocab: int = 32000,
    output: int = 100 * MB,
) -> ModelInfo:
    sizes = tuple(layers) if layers is not None else (layer,) * n_layers
    return ModelInfo(
        path="m.gguf",
        name="m",
        architecture="llama",
        n_layers=len(sizes),
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_ctx_train=4096,
        n_head=32,
        n_head_kv=8,
        n_ff=11008,
        file_bytes=sum(sizes) + 200 * MB,
        quant="Q8_0",
        layer_bytes=sizes,
        embedding_bytes=100 * MB,
        output_bytes=output,
        kv_bytes_per_token_per_layer=4096,
    )


def coordinator(
    layer_s: float = 0.01, free: int | None = None, fixed_s: float = 0.001
) -> StageProfile:
    return StageProfile("coordinator", None, layer_s, fixed_s, float("inf"), free)


def worker(
    i: int, layer_s: float = 0.01, rtt: float = 0.001, free: int | None = None, bw: float = 1e9
) -> StageProfile:
    return StageProfile(f"w{i}", f"10.0.0.{i}:50052", layer_s, rtt, bw, free)


def gib(x: float) -> int:
    return int(x * 1024 * MB)


def test_fits_locally_proposes_local_run() -> None:
    info = model()
    profile = ClusterProfile(coordinator(free=gib(64)), (worker(1), worker(2)))
    result = solve(info, 2048, profile)
    assert result.verdict == "local"
    assert result.plan is not None and result.plan.counts == (8,)
    assert "run it locally" in result.messages[0]
    assert result.local_tps == pytest.approx(result.predicted_tps)


def test_faster_worker_beats_local_and_says_why() -> None:
    info = model()
    profile = ClusterProfile(coordinator(0.05, free=gib(64)), (worker(1, 0.005),))
    result = solve(info, 2048, profile)
    assert result.verdict == "sharded"
    assert result.plan is not None and result.plan.counts == (0, 8)
    assert "predicted faster" in result.messages[0]
    assert result.predicted_tps > (result.local_tps or 0)


def test_memory_bound_split_follows_free_memory() -> None:
    info = model(n_layers=10)
    cost = CostModel(info, 2048)
    three = cost.memory(0, 3, False, False).total
    seven = cost.memory(3, 7, False, True).total
    profile = ClusterProfile(
        coordinator(free=cost.memory(0, 0, True, False).total),
        (worker(1, free=three), worker(2, free=seven)),
    )
    result = solve(info, 2048, profile)
    assert result.plan is not None
    assert result.plan.counts == (0, 3, 7)
    assert [w.name for w in result.plan.workers] == ["w1", "w2"]
    assert all(s.fits for s in result.stages)


def test_speed_bound_gives_more_layers_to_the_faster_worker() -> None:
    info = model(n_layers=12, output=10 * MB)
    cost = CostModel(info, 2048)
    room = cost.memory(0, 8, False, True).total
    profile = ClusterProfile(
        coordinator(free=cost.memory(0, 0, True, False).total),
        (worker(1, 0.03, free=room), worker(2, 0.01, free=room)),
    )
    result = solve(info, 2048, profile)
    assert result.plan is not None
    counts = dict(zip([w.name for w in result.plan.workers], result.plan.counts[1:], strict=True))
    assert counts == {"w1": 4, "w2": 8}
    assert result.plan.output_stage == 2 and result.plan.workers[1].name == "w2"
    assert result.bottleneck == "w1"


def test_too_big_says_by_how_much() -> None:
    info = model(n_layers=8)
    profile = ClusterProfile(coordinator(free=gib(0.2)), (worker(1, free=gib(0.3)),))
    result = solve(info, 2048, profile)
    assert result.verdict == "too-big"
    assert result.plan is None
    assert result.shortfall > gib(0.3)
    assert "short" in result.messages[0]
    assert result.predicted_tps == 0.0


def test_enough_memory_in_all_but_no_split_fits() -> None:
    info = model(n_layers=2, layer=gib(1))
    whole = CostModel(info, 16).memory(0, 2, True, True).total
    # Plenty in all, but every stage is smaller than one layer.
    profile = ClusterProfile(
        coordinator(free=gib(0.5)), tuple(worker(i, free=gib(0.5)) for i in range(1, 8))
    )
    assert 8 * gib(0.5) > whole
    result = solve(info, 16, profile)
    assert result.verdict == "too-big"
    assert result.shortfall == 0
    assert "no split fits" in result.messages[0]


def test_slow_worker_is_not_worth_its_round_trip() -> None:
    info = model(n_layers=8)
    cost = CostModel(info, 2048)
    profile = ClusterProfile(
        coordinator(free=cost.memory(0, 2, True, False).total),
        (worker(1, 0.01, rtt=0.001), worker(2, 0.011, rtt=0.2), worker(3, 0.01, rtt=0.001)),
    )
    result = solve(info, 2048, profile)
    assert result.plan is not None
    assert "w2" not in [w.name for w in result.plan.workers]
    assert any("left out: w2" in m for m in result.messages)


def test_fewer_workers_win_when_faster() -> None:
    info = model(n_layers=8)
    profile = ClusterProfile(
        coordinator(free=CostModel(info, 512).memory(0, 0, True, False).total),
        (worker(1, 0.01, rtt=0.005), worker(2, 0.01, rtt=0.005)),
    )
    result = solve(info, 512, profile)
    assert result.plan is not None and len(result.plan.workers) == 1


def test_order_follows_memory_when_layers_differ() -> None:
    sizes = [50 * MB] * 4 + [200 * MB] * 4
    info = model(layers=sizes, n_vocab=4096)
    cost = CostModel(info, 256)
    small = cost.memory(0, 4, False, False).total
    big = cost.memory(4, 4, False, True).total
    profile = ClusterProfile(
        coordinator(free=cost.memory(0, 0, True, False).total),
        (worker(1, free=big), worker(2, free=small)),
    )
    result = solve(info, 256, profile)
    assert result.plan is not None
    assert [w.name for w in result.plan.workers] == ["w2", "w1"]
    assert result.plan.counts == (0, 4, 4)
    assert result.extra["exact"] is True


def test_explain_matches_engine_memory_and_rejects_unknown_worker() -> None:
    info = model(n_layers=6)
    refs = [WorkerRef("w1", "10.0.0.1:50052"), WorkerRef("w2", "10.0.0.2:50052")]
    plan = LayerPlan.from_counts(6, [1, 2, 3], refs)
    profile = ClusterProfile(coordinator(), (worker(1), worker(2)))
    result = explain(info, 1024, profile, plan)
    assert [s.memory for s in result.stages] == stage_memory(info, plan, 1024)
    other = LayerPlan.from_counts(6, [1, 5], [WorkerRef("x", "10.9.9.9:1")])
    with pytest.raises(QuorumError, match="was not measured"):
        explain(info, 1024, profile, other)


def test_curve_interpolates_and_continues_at_layer_s() -> None:
    p = StageProfile("w", "10.0.0.1:1", 0.01, curve=((1, 0.001), (2, 0.004), (4, 0.02)))
    assert p.compute(0) == 0.0
    assert p.compute(1) == pytest.approx(0.001)
    assert p.compute(1.5) == pytest.approx(0.0025)
    assert p.compute(3) == pytest.approx(0.012)
    assert p.compute(6) == pytest.approx(0.04)
    assert StageProfile("w", None, 0.01).compute(3) == pytest.approx(0.03)


def test_cache_friendly_stages_spread_the_layers() -> None:
    # Few layers per stage run fast (they stay in cache), many run slowly: spreading wins
    # even though every worker costs a round trip.
    curve = ((1, 0.001), (2, 0.002), (4, 0.02))
    info = model(n_layers=6, output=1 * MB)
    cost = CostModel(info, 256)
    profile = ClusterProfile(
        coordinator(0.01, free=cost.memory(0, 0, True, False).total),
        tuple(
            StageProfile(f"w{i}", f"10.0.0.{i}:1", 0.01, 0.0005, 1e9, None, curve)
            for i in (1, 2, 3)
        ),
    )
    result = solve(info, 256, profile)
    assert result.plan is not None
    assert sorted(result.plan.counts[1:]) == [2, 2, 2]
    linear = ClusterProfile(
        profile.coordinator, tuple(dataclasses.replace(w, curve=()) for w in profile.workers)
    )
    assert len(solve(info, 256, linear).plan.workers) == 1  # type: ignore[union-attr]


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(QuorumError, match="negative"):
        ClusterProfile(coordinator(-1.0))
    with pytest.raises(QuorumError, match="negative"):
        ClusterProfile(StageProfile("c", None, 0.01, curve=((2, 0.1), (1, 0.2))))
    with pytest.raises(QuorumError, match="negative"):
        ClusterProfile(StageProfile("c", None, 0.01, curve=((1, -0.1),)))
    with pytest.raises(QuorumError, match="at most 16"):
        ClusterProfile(coordinator(), tuple(worker(i) for i in range(17)))


def test_sixteen_workers_are_planned() -> None:
    info = model(n_layers=40)
    cost = CostModel(info, 512)
    profile = ClusterProfile(
        coordinator(0.02, free=cost.memory(0, 0, True, False).total),
        tuple(
            worker(i, 0.005 + 0.001 * i, free=cost.memory(0, 4, False, True).total)
            for i in range(16)
        ),
    )
    result = solve(info, 512, profile)
    assert result.plan is not None
    assert sum(result.plan.counts) == 40
    assert all(s.fits for s in result.stages)
    assert result.extra["exact"] is True


Drawn = tuple[list[float], list[float], list[int], float, int]
"""Worker speeds, round trips, memory caps in layers, coordinator speed and cap (-1: none)."""

profiles = st.builds(
    lambda speeds, rtts, caps, c_speed, c_cap: (speeds, rtts, caps, c_speed, c_cap),
    st.lists(st.sampled_from([0.002, 0.005, 0.01, 0.03]), min_size=0, max_size=3),
    st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.05]), min_size=3, max_size=3),
    st.lists(st.integers(0, 6), min_size=3, max_size=3),
    st.sampled_from([0.002, 0.01, 0.05]),
    st.integers(-1, 6),
)


def build(info: ModelInfo, data: Drawn, ctx: int = 256) -> ClusterProfile:
    speeds, rtts, caps, c_speed, c_cap = data
    cost = CostModel(info, ctx)
    n = info.n_layers
    heaviest = [
        max(cost.memory(f, k, False, True).total for f in range(n - k + 1)) for k in range(n + 1)
    ]
    coord_free = None if c_cap < 0 else cost.memory(0, min(c_cap, n), True, c_cap >= n).total
    workers = tuple(
        dataclasses.replace(
            worker(i + 1, s, rtts[i], free=heaviest[min(caps[i], n)] if caps[i] else None),
            curve=((1, s / 4), (2, s)) if i % 2 else (),
        )
        for i, s in enumerate(speeds)
    )
    return ClusterProfile(coordinator(c_speed, free=coord_free), workers)


def best_time(choice: tuple[float, list[int], list[int]] | None) -> float | None:
    return None if choice is None else choice[0]


@settings(max_examples=60, deadline=None)
@given(profiles, st.integers(1, 6))
def test_knapsack_equals_brute_force_on_equal_layers(data: Drawn, n_layers: int) -> None:
    info = model(n_layers=n_layers, n_vocab=8000)
    profile = build(info, data)
    expected = best_time(brute_force(info, 256, profile))
    got = best_time(solve_knapsack(info, 256, profile))
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
        result = solve(info, 256, profile)
        assert result.per_token_s == pytest.approx(expected, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(profiles, st.lists(st.sampled_from([40, 100, 250]), min_size=1, max_size=6))
def test_exact_search_equals_brute_force_on_unequal_layers(data: Drawn, sizes: list[int]) -> None:
    info = model(layers=[s * MB for s in sizes], n_vocab=8000)
    profile = build(info, data)
    expected = best_time(brute_force(info, 256, profile))
    got = best_time(solve_exact(info, 256, profile))
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
        result = solve(info, 256, profile)
        assert result.per_token_s == pytest.approx(expected, rel=1e-9)
        assert result.plan is not None
        assert all(s.fits for s in result.stages)


@settings(max_examples=40, deadline=None)
@given(profiles, st.integers(1, 6))
def test_knapsack_plans_always_fit(data: Drawn, n_layers: int) -> None:
    info = model(layers=[(50 + 30 * (i % 3)) * MB for i in range(n_layers)], n_vocab=8000)
    profile = build(info, data)
    choice = solve_knapsack(info, 256, profile)
    if choice is not None:
        _, counts, order = choice
        refs = [
            WorkerRef(profile.workers[i].name, profile.workers[i].endpoint or "") for i in order
        ]
        plan = LayerPlan.from_counts(n_layers, counts, refs)
        assert all(s.fits for s in explain(info, 256, profile, plan).stages)


def refs(profile: ClusterProfile) -> list[WorkerRef]:
    return [WorkerRef(w.name, w.endpoint or "") for w in profile.workers]


def test_every_estimate_counts_the_weights_a_load_sends_over_each_link() -> None:
    info = model(n_layers=4, layer=100 * MB, output=50 * MB)
    cached = (100 * MB, 40 * MB, 0, 0, 0)
    w1 = dataclasses.replace(worker(1, bw=10 * MB), cached=cached)
    profile = ClusterProfile(coordinator(free=0), (w1, worker(2, bw=20 * MB)))
    plan = LayerPlan.from_counts(4, [0, 2, 2], refs(profile))
    result = explain(info, 2048, profile, plan)
    first, second = result.stages[1], result.stages[2]
    assert first.load_bytes == 60 * MB and first.load_s == pytest.approx(6.0)
    assert second.load_bytes == 250 * MB and second.load_s == pytest.approx(12.5)
    assert result.load_s == pytest.approx(18.5) and result.stages[0].load_bytes == 0
    assert any("loading sends 310.0 MiB" in line for line in result.lines())


def test_a_replan_keeps_the_cached_placement_when_it_is_nearly_as_fast() -> None:
    info = model(n_layers=4)
    full = (100 * MB,) * 4 + (100 * MB,)
    slow = dataclasses.replace(worker(1, layer_s=0.011, bw=10 * MB), cached=full)
    fast = worker(2, layer_s=0.010, bw=10 * MB)
    profile = ClusterProfile(coordinator(1.0, free=gib(64)), (slow, fast))
    fastest = solve(info, 2048, profile)
    assert fastest.plan is not None and fastest.plan.workers[0].name == "w2"
    held = LayerPlan.from_counts(4, [0, 4], refs(profile)[:1])
    kept = solve(info, 2048, profile, keep=[held])
    assert kept.plan == held and kept.load_s == 0.0
    assert any("whose layers the workers already cache" in m for m in kept.messages)

    slower = dataclasses.replace(slow, layer_s=0.02)
    profile = ClusterProfile(coordinator(1.0, free=gib(64)), (slower, fast))
    assert solve(info, 2048, profile, keep=[held]).plan != held, "too slow to keep"
