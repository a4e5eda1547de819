"""Layer plans: which contiguous range of transformer layers each stage holds.

A plan has the coordinator as stage 0 and the workers after it, in device order. Each stage
holds a contiguous, possibly empty, range of layers; the ranges follow each other in stage
order, and the last non-empty stage also holds the output layer. This module is pure: no I/O.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quorum_tui.errors import QuorumError

MAX_WORKERS = 16
"""llama.cpp's GGML_RPC_MAX_SERVERS, and the length of its tensor_split array."""

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class WorkerRef:
    """A worker as a plan knows it: a label and the endpoint the coordinator dials."""

    name: str
    endpoint: str


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: `count` layers starting at `first`."""

    name: str
    endpoint: str | None
    first: int
    count: int

    @property
    def last(self) -> int | None:
        """Index of the last layer held, or None when the stage is empty."""
        return self.first + self.count - 1 if self.count else None

    @property
    def layers(self) -> range:
        return range(self.first, self.first + self.count)

    def describe(self) -> str:
        if not self.count:
            return "none"
        if self.count == 1:
            return f"layer {self.first}"
        return f"layers {self.first}-{self.last}"


@dataclass(frozen=True)
class LlamaParams:
    """What a plan becomes for llama.cpp: offload count, split and device order."""

    n_gpu_layers: int
    tensor_split: tuple[float, ...]
    devices: tuple[str, ...]
    split_mode: int = 1


@dataclass(frozen=True)
class LayerPlan:
    """An ordered list of stages covering layers 0..n_layers-1 exactly once."""

    n_layers: int
    stages: tuple[Stage, ...]

    @classmethod
    def from_counts(
        cls, n_layers: int, counts: Sequence[int], workers: Sequence[WorkerRef]
    ) -> LayerPlan:
        """Build a plan from layer counts, coordinator first; validate everything."""
        check_workers(workers)
        if len(counts) != len(workers) + 1:
            raise QuorumError(
                f"the split has {len(counts)} counts but there are {len(workers)} workers: "
                f"give one count for the coordinator and one per worker ({len(workers) + 1} in all)"
            )
        names = [COORDINATOR, *(w.name for w in workers)]
        for name, count in zip(names, counts, strict=True):
            if count < 0:
                raise QuorumError(f"the split gives {count} layers to {name}: counts must be >= 0")
        total = sum(counts)
        if total != n_layers:
            raise QuorumError(
                f"the split adds up to {total} layers but the model has {n_layers}: "
                f"the counts must add up to {n_layers}"
            )
        stages = []
        first = 0
        endpoints: list[str | None] = [None, *(w.endpoint for w in workers)]
        for name, endpoint, count in zip(names, endpoints, counts, strict=True):
            stages.append(Stage(name, endpoint, first, count))
            first += count
        return cls(n_layers, tuple(stages))

    @classmethod
    def even(cls, n_layers: int, workers: Sequence[WorkerRef]) -> LayerPlan:
        """Spread the layers evenly over the workers, none on the coordinator."""
        return cls.from_counts(n_layers, even_counts(n_layers, len(workers)), workers)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(s.count for s in self.stages)

    @property
    def workers(self) -> tuple[WorkerRef, ...]:
        return tuple(WorkerRef(s.name, s.endpoint or "") for s in self.stages[1:])

    @property
    def output_stage(self) -> int:
        """Index of the stage holding the output layer: the last non-empty stage."""
        for index in range(len(self.stages) - 1, -1, -1):
            if self.stages[index].count:
                return index
        return 0

    def assignment(self) -> list[int]:
        """Stage index for each layer 0..n_layers, the last entry being the output layer."""
        owners = [i for i, s in enumerate(self.stages) for _ in s.layers]
        return [*owners, self.output_stage]

    def with_counts(self, counts: Sequence[int]) -> LayerPlan:
        return LayerPlan.from_counts(self.n_layers, counts, self.workers)

    def boundaries(self) -> list[int]:
        """Layer index where each stage after the first begins (one per adjacent pair)."""
        return [s.first for s in self.stages[1:]]

    def move_boundary(self, boundary: int, delta: int) -> LayerPlan:
        """Move the boundary between stage `boundary` and `boundary + 1` by `delta` layers.

        A positive delta gives layers from the later stage to the earlier one. The move is
        clamped so that no stage goes below zero layers.
        """
        if not 0 <= boundary < len(self.stages) - 1:
            raise QuorumError(f"there is no boundary {boundary} in a plan of {len(self.stages)}")
        counts = list(self.counts)
        delta = max(-counts[boundary], min(delta, counts[boundary + 1]))
        counts[boundary] += delta
        counts[boundary + 1] -= delta
        return self.with_counts(counts)

    def set_boundary(self, boundary: int, layer: int) -> LayerPlan:
        """Place the start of stage `boundary + 1` at `layer`, clamped to its neighbours."""
        current = self.stages[boundary + 1].first
        return self.move_boundary(boundary, layer - current)

    def swap_workers(self, a: int, b: int) -> LayerPlan:
        """Exchange the positions of workers a and b (0-based among workers), keeping counts."""
        workers = list(self.workers)
        workers[a], workers[b] = workers[b], workers[a]
        return LayerPlan.from_counts(self.n_layers, self.counts, workers)

    def rename(self, workers: Sequence[WorkerRef]) -> LayerPlan:
        """The same counts over another list of workers of the same length."""
        return LayerPlan.from_counts(self.n_layers, self.counts, workers)

    def summary(self) -> str:
        """One line: `coordinator 0, gpu-a 1-2, gpu-b 3-4+out`."""
        parts = []
        for i, stage in enumerate(self.stages):
            span = "-" if not stage.count else f"{stage.first}-{stage.last}"
            if stage.count == 1:
                span = str(stage.first)
            out = "+out" if i == self.output_stage else ""
            parts.append(f"{stage.name} {span}{out}")
        return ", ".join(parts)

    def to_llama_params(self, device_counts: Sequence[int] | None = None) -> LlamaParams:
        """Convert to n_gpu_layers and tensor_split that make llama.cpp realize this plan.

        llama.cpp keeps the first N + 1 - n_gpu_layers layers on the CPU and spreads the rest
        over the devices by `upper_bound` on the normalised cumulative split. Integer counts sit
        exactly on those float boundaries, so each cut is placed half a layer early. A worker
        with several devices (`device_counts`) puts its layers on its first device.
        """
        worker_counts = self.counts[1:]
        on_workers = sum(worker_counts)
        devices = tuple(s.endpoint or "" for s in self.stages[1:])
        if on_workers == 0:
            return LlamaParams(0, _expand([0.0] * len(devices), device_counts), devices)
        offloaded = on_workers + 1
        last = max(i for i, c in enumerate(worker_counts) if c)
        targets = []
        cumulative = 0
        for i, count in enumerate(worker_counts):
            cumulative += count
            if i >= last:
                targets.append(float(offloaded))
            else:
                targets.append(max(cumulative - 0.5, 0.0))
        split = [targets[0]] + [b - a for a, b in itertools.pairwise(targets)]
        return LlamaParams(offloaded, _expand(split, device_counts), devices)


def _expand(split: Sequence[float], device_counts: Sequence[int] | None) -> tuple[float, ...]:
    if device_counts is None:
        return tuple(split)
    out: list[float] = []
    for value, count in zip(split, device_counts, strict=True):
        out += [value] + [0.0] * (count - 1)
    return tuple(out)


def even_counts(n_layers: int, n_workers: int) -> list[int]:
    """Counts for an even spread over the workers (earlier workers take the remainder)."""
    if n_workers == 0:
        return [n_layers]
    base, extra = divmod(n_layers, n_workers)
    return [0, *(base + (1 if i < extra else 0) for i in range(n_workers))]


def check_workers(workers: Sequence[WorkerRef]) -> None:
    if len(workers) > MAX_WORKERS:
        raise QuorumError(
            f"{len(workers)} workers given but llama.cpp accepts at most {MAX_WORKERS}: "
            "drop some workers"
        )
    seen: dict[str, str] = {}
    for w in workers:
        if w.endpoint in seen:
            raise QuorumError(
                f"workers {seen[w.endpoint]} and {w.name} both use {w.endpoint}: "
                "each worker serves one coordinator connection, give each its own endpoint"
            )
        seen[w.endpoint] = w.name


def parse_split(text: str) -> list[int]:
    """Parse `--split C,W1,...,Wn` into integer counts."""
    parts = [p.strip() for p in text.split(",")]
    counts = []
    for part in parts:
        try:
            counts.append(int(part))
        except ValueError:
            raise QuorumError(
                f"--split {text!r}: {part!r} is not a whole number; "
                "give layer counts like 1,2,2 (coordinator first, then each worker)"
            ) from None
    return counts


def llama_layer_devices(
    n_layers: int, n_gpu_layers: int, tensor_split: Sequence[float]
) -> list[int | None]:
    """llama.cpp's own rule (llama-model.cpp, load_tensors) for where each layer goes.

    Returns the device index for layers 0..n_layers (the last being the output layer), or
    None for the CPU. Arithmetic is float32, as in llama.cpp.
    """
    n_devices = len(tensor_split)
    splits = np.asarray(tensor_split, dtype=np.float32)
    if n_devices and not splits.any():
        raise ValueError("an all-zero tensor_split asks llama.cpp for its memory-based split")
    cumulative = np.cumsum(splits, dtype=np.float32)
    total = cumulative[-1] if n_devices else np.float32(1)
    points = [float(np.float32(c) / total) for c in cumulative]
    gpu_start = max(n_layers + 1 - n_gpu_layers, 0)
    active = 0 if n_devices == 0 else min(n_gpu_layers, n_layers + 1)
    owners: list[int | None] = []
    for il in range(n_layers + 1):
        if il < gpu_start or il - gpu_start >= active:
            owners.append(None)
            continue
        position = float(np.float32(il - gpu_start) / np.float32(active))
        owners.append(bisect.bisect_right(points, position))
    return owners


def assignment_from_devices(owners: Sequence[int | None]) -> list[int]:
    """Map llama.cpp device owners (None = CPU) to stage indices (0 = coordinator)."""
    return [0 if o is None else o + 1 for o in owners]


def plan_from_assignment(
    assignment: Sequence[int], workers: Sequence[WorkerRef]
) -> tuple[LayerPlan, int]:
    """Rebuild a plan from a per-layer stage list (output last); return it and the output stage.

    Raises QuorumError when the layers are not contiguous per stage in stage order, which
    no plan can express.
    """
    *layers, output = assignment
    counts = [0] * (len(workers) + 1)
    previous = 0
    for il, stage in enumerate(layers):
        if stage < previous:
            raise QuorumError(f"layer {il} went back to stage {stage} after stage {previous}")
        counts[stage] += 1
        previous = stage
    return LayerPlan.from_counts(len(layers), counts, workers), output
