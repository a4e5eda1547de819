"""Layer plans: exhaustive and property tests against llama.cpp's own placement rule."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum_tui.engine.plan import (
    MAX_WORKERS,
    LayerPlan,
    WorkerRef,
    assignment_from_devices,
    even_counts,
    llama_layer_devices,
    parse_split,
    plan_from_assignment,
)
from quorum_tui.errors import QuorumError


def workers(n: int) -> list[WorkerRef]:
    return [WorkerRef(f"w{i + 1}", f"127.0.0.1:{50100 + i}") for i in range(n)]


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def realized(plan: LayerPlan, device_counts: list[int] | None = None) -> list[int]:
    """Where llama.cpp's rule puts each layer for this plan's parameters, as stage indices."""
    params = plan.to_llama_params(device_counts)
    if params.n_gpu_layers == 0:
        return [0] * (plan.n_layers + 1)
    owners = llama_layer_devices(plan.n_layers, params.n_gpu_layers, params.tensor_split)
    if device_counts is None:
        return assignment_from_devices(owners)
    device_stage = [s for s, c in enumerate(device_counts, start=1) for _ in range(c)]
    return [0 if o is None else device_stage[o] for o in owners]


@pytest.mark.parametrize("n_workers", [0, 1, 2, 3, 4])
def test_every_plan_of_small_models_round_trips_through_llama_rule(n_workers: int) -> None:
    checked = 0
    for n_layers in range(1, 11):
        for counts in compositions(n_layers, n_workers + 1):
            plan = LayerPlan.from_counts(n_layers, counts, workers(n_workers))
            assert realized(plan) == plan.assignment(), counts
            checked += 1
    assert checked > 0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, MAX_WORKERS).flatmap(
        lambda n: st.lists(st.integers(0, 40), min_size=n + 1, max_size=n + 1)
    )
)
def test_large_plans_round_trip(counts: list[int]) -> None:
    n_layers = sum(counts)
    if n_layers == 0:
        counts[0] = 1
        n_layers = 1
    plan = LayerPlan.from_counts(n_layers, counts, workers(len(counts) - 1))
    assert realized(plan) == plan.assignment()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 3)), min_size=1, max_size=5),
    st.integers(0, 6),
)
def test_multi_device_workers_put_layers_on_their_first_device(
    spec: list[tuple[int, int]], on_coordinator: int
) -> None:
    counts = [on_coordinator, *(c for c, _ in spec)]
    n_layers = sum(counts) or 1
    counts[0] += n_layers - sum(counts)
    plan = LayerPlan.from_counts(n_layers, counts, workers(len(spec)))
    assert realized(plan, [d for _, d in spec]) == plan.assignment()


def test_split_example_from_the_notes() -> None:
    plan = LayerPlan.from_counts(5, [1, 2, 2], workers(2))
    params = plan.to_llama_params()
    assert params.n_gpu_layers == 5
    assert params.tensor_split == (1.5, 3.5)
    assert plan.assignment() == [0, 1, 1, 2, 2, 2]
    assert plan.output_stage == 2
    assert [(s.first, s.last) for s in plan.stages] == [(0, 0), (1, 2), (3, 4)]


def test_output_goes_with_the_last_non_empty_stage() -> None:
    plan = LayerPlan.from_counts(5, [1, 4, 0], workers(2))
    assert plan.output_stage == 1
    assert plan.assignment()[-1] == 1
    assert LayerPlan.from_counts(5, [5, 0, 0], workers(2)).output_stage == 0
    assert LayerPlan.from_counts(5, [0, 0, 5], workers(2)).assignment() == [2] * 6


def test_even_spread_leaves_coordinator_empty() -> None:
    assert even_counts(5, 2) == [0, 3, 2]
    assert even_counts(7, 3) == [0, 3, 2, 2]
    assert even_counts(5, 0) == [5]
    assert LayerPlan.even(2, workers(3)).counts == (0, 1, 1, 0)


@pytest.mark.parametrize(
    ("counts", "n_workers", "message"),
    [
        ([1, 2, 1], 2, "adds up to 4 layers but the model has 5"),
        ([1, 2, 3], 2, "adds up to 6 layers"),
        ([-1, 3, 3], 2, "gives -1 layers to coordinator"),
        ([1, 4], 2, "has 2 counts but there are 2 workers"),
        ([0] * 18 + [5], 18, "at most 16"),
    ],
)
def test_bad_splits_are_refused_with_the_reason(
    counts: list[int], n_workers: int, message: str
) -> None:
    with pytest.raises(QuorumError, match=message):
        LayerPlan.from_counts(5, counts, workers(n_workers))


def test_same_endpoint_twice_is_refused() -> None:
    twice = [WorkerRef("a", "127.0.0.1:1"), WorkerRef("b", "127.0.0.1:1")]
    with pytest.raises(QuorumError, match=r"both use 127\.0\.0\.1:1"):
        LayerPlan.even(4, twice)


@pytest.mark.parametrize("text", ["1,x,2", "1;2", "", "1.5,2"])
def test_parse_split_rejects_non_numbers(text: str) -> None:
    with pytest.raises(QuorumError, match="not a whole number"):
        parse_split(text)


def test_parse_split_reads_counts() -> None:
    assert parse_split("1, 2,2") == [1, 2, 2]


def test_move_boundary_moves_and_clamps() -> None:
    plan = LayerPlan.from_counts(10, [2, 4, 4], workers(2))
    assert plan.move_boundary(0, 1).counts == (3, 3, 4)
    assert plan.move_boundary(0, -5).counts == (0, 6, 4)
    assert plan.move_boundary(1, 10).counts == (2, 8, 0)
    assert plan.set_boundary(1, 3).counts == (2, 1, 7)
    with pytest.raises(QuorumError):
        plan.move_boundary(2, 1)


def test_every_boundary_move_keeps_a_valid_plan() -> None:
    for counts in compositions(6, 4):
        plan = LayerPlan.from_counts(6, counts, workers(3))
        for boundary, delta in itertools.product(range(3), range(-7, 8)):
            moved = plan.move_boundary(boundary, delta)
            assert sum(moved.counts) == 6
            untouched = [i for i in range(4) if i not in (boundary, boundary + 1)]
            assert all(moved.counts[i] == counts[i] for i in untouched)


def test_swap_workers_keeps_counts_and_moves_endpoints() -> None:
    plan = LayerPlan.from_counts(5, [1, 2, 2], workers(2)).swap_workers(0, 1)
    assert plan.counts == (1, 2, 2)
    assert [s.name for s in plan.stages] == ["coordinator", "w2", "w1"]


def test_plan_from_assignment_inverts_assignment() -> None:
    for counts in compositions(5, 3):
        plan = LayerPlan.from_counts(5, counts, workers(2))
        rebuilt, output = plan_from_assignment(plan.assignment(), workers(2))
        assert rebuilt == plan
        assert output == plan.output_stage
    with pytest.raises(QuorumError, match="went back"):
        plan_from_assignment([1, 0, 1], workers(1))


def test_summary_names_ranges_and_output() -> None:
    plan = LayerPlan.from_counts(5, [1, 2, 2, 0], workers(3))
    assert plan.summary() == "coordinator 0, w1 1-2, w2 3-4+out, w3 -"
