"""When speculation is expected to help: round trips against compute, and a draft's cost."""

from __future__ import annotations

import pytest

from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import ClusterProfile, explain, with_draft
from tests.planner.test_planner import MB, coordinator, gib, model, worker


def sharded(rtt: float, layer_s: float) -> tuple:
    info = model(n_layers=8)
    workers = tuple(worker(i, layer_s, rtt, free=gib(64)) for i in (1, 2))
    profile = ClusterProfile(coordinator(layer_s, free=gib(1)), workers)
    refs = [WorkerRef(w.name, w.endpoint or "") for w in workers]
    plan = LayerPlan.from_counts(8, [0, 4, 4], refs)
    return info, profile, explain(info, 2048, profile, plan)


def test_a_slow_link_is_round_trip_bound_and_says_speculation_helps() -> None:
    _, _, result = sharded(rtt=0.010, layer_s=0.0005)
    assert result.link_share > 0.5
    assert result.to_json()["speculation_helps"] is True
    assert "round-trip bound" in result.speculation_line()
    assert any(line.startswith("speculation: round-trip bound") for line in result.lines())
    assert result.speculation_gain > 2


def test_slow_layers_are_compute_bound_and_speculation_helps_little() -> None:
    _, _, result = sharded(rtt=0.0001, layer_s=0.02)
    assert result.link_share < 0.05
    assert result.to_json()["speculation_helps"] is False
    assert "compute-bound" in result.speculation_line()
    assert result.speculation_gain < 1.25


def test_tokens_per_pass_follow_the_acceptance() -> None:
    _, _, result = sharded(rtt=0.010, layer_s=0.0005)
    none = result.speculative_tps(0.0, 8)
    assert none < result.predicted_tps, "drafts that are never accepted only cost"
    rates = [result.speculative_tps(a, 8) for a in (0.2, 0.5, 0.8, 0.95)]
    assert rates == sorted(rates)


def test_the_draft_s_compute_counts_in_the_prediction() -> None:
    info, profile, result = sharded(rtt=0.010, layer_s=0.0005)
    small = with_draft(result, profile, info, model(n_layers=2, layer=10 * MB, output=5 * MB))
    large = with_draft(result, profile, info, model(n_layers=8, layer=100 * MB))
    assert small.extra["draft"]["draft_s"] < large.extra["draft"]["draft_s"]
    assert small.extra["draft"]["tps"] > large.extra["draft"]["tps"]
    big = model(n_layers=8, layer=100 * MB)
    per_byte = profile.coordinator.layer_s / (100 * MB)
    assert large.extra["draft"]["draft_s"] == pytest.approx(per_byte * big.weight_bytes)
    assert any(line.startswith("with the draft m") for line in small.lines())
