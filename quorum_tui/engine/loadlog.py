"""Read llama.cpp's load log: which device each layer really went to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.errors import QuorumError

_LAYER = re.compile(r"load_tensors: layer\s+(\d+) assigned to device ([^,\s]+)")
_DEVICE = re.compile(r"using device (RPC\d+) \(([^)\s]+)\)")
_RPC_DEVICE = re.compile(r"^RPC(\d+)(?:\[.*\])?$")


def layer_devices(lines: Iterable[str]) -> dict[int, str]:
    """`{layer: device name}` from the `assigned to device` lines of the first model loaded
    (a draft model for speculation loads after the target and says where its layers went)."""
    found: dict[int, str] = {}
    for line in lines:
        match = _LAYER.search(line)
        if match:
            found.setdefault(int(match.group(1)), match.group(2))
    return found


def device_endpoints(lines: Iterable[str]) -> dict[str, str]:
    """`{device name: endpoint}` from llama.cpp's `using device RPC0 (host:port)` lines."""
    found: dict[str, str] = {}
    for line in lines:
        match = _DEVICE.search(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def device_stage(
    device: str,
    workers: Sequence[WorkerRef],
    device_counts: Sequence[int] | None = None,
    endpoints: dict[str, str] | None = None,
) -> int:
    """Stage index of a llama.cpp device name: CPU is the coordinator, RPCn an RPC device.

    The endpoint llama.cpp printed for the device names its worker. Without it, RPC devices
    are numbered in registration order across workers, and a worker with several devices
    (GPUs) takes several numbers.
    """
    if device == "CPU":
        return 0
    match = _RPC_DEVICE.match(device)
    if match:
        endpoint = (endpoints or {}).get(f"RPC{match.group(1)}")
        if endpoint is not None:
            for stage, worker in enumerate(workers, start=1):
                if worker.endpoint == endpoint:
                    return stage
        else:
            index = int(match.group(1))
            counts = device_counts or [1] * len(workers)
            for stage, count in enumerate(counts, start=1):
                if index < count:
                    return stage
                index -= count
    raise QuorumError(f"llama.cpp put layers on {device}, which is not in the plan")


def realized_assignment(
    lines: Iterable[str],
    n_layers: int,
    workers: Sequence[WorkerRef],
    device_counts: Sequence[int] | None = None,
) -> list[int]:
    """Stage index per layer 0..n_layers (the output layer last), as llama.cpp loaded it."""
    text = list(lines)
    devices = layer_devices(text)
    endpoints = device_endpoints(text)
    missing = [il for il in range(n_layers + 1) if il not in devices]
    if missing:
        raise QuorumError(
            f"llama.cpp's load log does not say where layers {missing[:5]} went; "
            "was it loaded with debug logging?"
        )
    return [
        device_stage(devices[il], workers, device_counts, endpoints) for il in range(n_layers + 1)
    ]


def differences(plan: LayerPlan, assignment: Sequence[int]) -> list[str]:
    """Human-readable differences between a plan and a realized assignment."""
    wanted = plan.assignment()
    names = [s.name for s in plan.stages]
    out = []
    for il, (want, got) in enumerate(zip(wanted, assignment, strict=False)):
        if want != got:
            label = "output layer" if il == plan.n_layers else f"layer {il}"
            out.append(f"{label}: planned on {names[want]}, loaded on {names[got]}")
    if len(wanted) != len(assignment):
        out.append(f"{len(assignment)} layers realized, {len(wanted)} planned")
    return out
