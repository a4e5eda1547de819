"""Reading llama.cpp's load log into the realized assignment."""

from __future__ import annotations

import pytest

from quorum_tui.engine.loadlog import differences, layer_devices, realized_assignment
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.errors import QuorumError

W = [WorkerRef("a", "127.0.0.1:1"), WorkerRef("b", "127.0.0.1:2")]


def log(devices: list[str]) -> list[str]:
    return [
        "load_tensors: loading model tensors, this can take a while... (load_mode = mmap)",
        *(
            f"load_tensors: layer {il:>3} assigned to device {d}, is_swa = 0"
            for il, d in enumerate(devices)
        ),
        "load_tensors: offloaded 5/6 layers to GPU",
    ]


def test_realized_assignment_maps_devices_to_stages() -> None:
    lines = log(["CPU", "RPC0", "RPC0", "RPC1", "RPC1", "RPC1"])
    assert realized_assignment(lines, 5, W) == [0, 1, 1, 2, 2, 2]
    assert layer_devices(lines)[3] == "RPC1"


def test_workers_with_several_devices() -> None:
    lines = log(["CPU", "RPC0", "RPC1", "RPC2", "RPC2", "RPC2"])
    assert realized_assignment(lines, 5, W, device_counts=[2, 1]) == [0, 1, 1, 2, 2, 2]


def test_unknown_device_and_missing_layers_are_errors() -> None:
    with pytest.raises(QuorumError, match="RPC5"):
        realized_assignment(log(["CPU", "RPC5", "RPC0", "RPC0", "RPC0", "RPC0"]), 5, W)
    with pytest.raises(QuorumError, match="does not say where layers"):
        realized_assignment(log(["CPU", "CPU"]), 5, W)


def test_differences_name_layers_and_stages() -> None:
    plan = LayerPlan.from_counts(5, [1, 2, 2], W)
    assert differences(plan, plan.assignment()) == []
    found = differences(plan, [0, 0, 1, 2, 2, 1])
    assert found == [
        "layer 1: planned on a, loaded on coordinator",
        "output layer: planned on b, loaded on a",
    ]
