"""What the app is started with, and the plan arithmetic its screens show (no Textual)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import whole_model_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.models.registry import REAL_DEMO_MODEL
from quorum_tui.units import human_bytes

DEMO_MODEL = REAL_DEMO_MODEL
"""SmolLM2-135M-Instruct from the package registry: the same real model on every machine."""
SYNTHETIC_DEMO_MODEL = "synthetic:layers=8,embd=256,heads=8,vocab=1024,dtype=f16"
"""What the demo falls back to when the registry cannot be reached (random weights)."""
DEMO_WORKERS = 2


@dataclass
class Setup:
    """How the app starts: a model spec, workers, a demo cluster, live probing or a fixed view."""

    model: str | None = None
    workers: list[WorkerRef] = field(default_factory=list)
    demo_workers: int = 0
    live: bool = True
    offer_demo: bool = False
    settings: EngineSettings = field(default_factory=EngineSettings)
    temperature: float | None = None
    """The Chat's sampling temperature (None: the server's); the demo uses 0, greedy."""
    fixed_hosts: list[dict[str, Any]] = field(default_factory=list)
    """Rows shown as given instead of probing (snapshots and screenshots)."""
    local_free: int | None = None
    """Free memory of this machine to show instead of measuring it."""
    cluster_file: Path | None = None
    """The SSH cluster file (default: cluster.toml in the config dir)."""


def is_synthetic(info: ModelInfo) -> bool:
    return info.name.startswith("synthetic") or "synthetic" in info.path.rsplit("/", 1)[-1]


def model_label(info: ModelInfo) -> str:
    """`SmolLM2-135M-Instruct.Q4_1: 30 layers, llama, Q4_1`: files are named for people, the
    GGUF's own name often for its training run; a synthetic model says it is noise."""
    if is_synthetic(info):
        words = f"{info.name}: {info.n_layers} layers, {info.architecture}, {info.quant}"
        return (
            words if "random weights" in words else f"{words} (random weights: the text is noise)"
        )
    name = Path(info.path).name.removesuffix(".gguf")
    return f"{name}: {info.n_layers} layers, {info.architecture}, {info.quant}"


def proposal(info: ModelInfo, workers: Sequence[WorkerRef]) -> LayerPlan:
    """The first plan, before anything is measured: the layers spread evenly over the workers."""
    return LayerPlan.even(info.n_layers, workers)


def realized_ranges(realized: Sequence[int], n_stages: int) -> list[str]:
    """Per stage, the layers llama.cpp put there (`1-3`, `4`, `-`, with `+out`)."""
    *layers, output = realized
    out = []
    for stage in range(n_stages):
        mine = [i for i, s in enumerate(layers) if s == stage]
        if not mine:
            text = "-"
        elif mine == list(range(mine[0], mine[-1] + 1)):
            text = str(mine[0]) if len(mine) == 1 else f"{mine[0]}-{mine[-1]}"
        else:
            text = ",".join(map(str, mine))
        out.append(text + ("+out" if output == stage else ""))
    return out


def planned_ranges(plan: LayerPlan) -> list[str]:
    return realized_ranges(plan.assignment(), len(plan.stages))


def sharding_advice(info: ModelInfo, settings: EngineSettings, local_free: int | None) -> str:
    """Which case the user is in: a model that fits this machine runs slower sharded."""
    if local_free is None:
        return ""
    need = whole_model_memory(info, settings.ctx, settings.slots).total
    if need <= local_free:
        return (
            f"Fits on this machine alone ({human_bytes(need)} needed, {human_bytes(local_free)} "
            "free): sharding it only adds a network round trip per worker to every token. It is "
            "split here to show how sharding works; shard the models that do not fit."
        )
    return (
        f"Needs {human_bytes(need)}, more than this machine's {human_bytes(local_free)} free: "
        "sharding is what lets it run."
    )
