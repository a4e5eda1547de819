"""What the app is started with, and the plan arithmetic its screens show (no Textual)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings

DEMO_MODEL = "synthetic:layers=8,embd=256,heads=8,vocab=1024,dtype=f16"
DEMO_HUB_MODEL = "bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"
"""A real small instruct model, used by the demo when the Hub answers."""
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
    fixed_hosts: list[dict[str, Any]] = field(default_factory=list)
    """Rows shown as given instead of probing (snapshots and screenshots)."""
    local_free: int | None = None
    """Free memory of this machine to show instead of measuring it."""
    cluster_file: Path | None = None
    """The SSH cluster file (default: cluster.toml in the config dir)."""


def is_synthetic(info: ModelInfo) -> bool:
    return info.name.startswith("synthetic") or "synthetic" in info.path.rsplit("/", 1)[-1]


def model_label(info: ModelInfo) -> str:
    words = f"{info.name}: {info.n_layers} layers, {info.architecture}, {info.quant}"
    if is_synthetic(info) and "random weights" not in words:
        return f"{words} (random weights: the text is noise)"
    return words


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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers quickly (never when HF_HUB_OFFLINE is set)."""
    import httpx

    try:
        from quorum_tui.models import hub

        if hub.offline():
            return False
        httpx.head(hub.endpoint(), timeout=timeout)
    except Exception:
        return False
    return True
