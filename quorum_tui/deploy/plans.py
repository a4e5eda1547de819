"""Which plan to load: a split the user gave, the even spread, or the planner's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import Explanation
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError


@dataclass(frozen=True)
class PlanRequest:
    """`split` (coordinator first), or `auto` (measure and solve), or neither: even."""

    split: tuple[int, ...] | None = None
    auto: bool = False

    def __post_init__(self) -> None:
        if self.auto and self.split is not None:
            raise QuorumError("--auto chooses the split itself: give --auto or --split, not both")


async def make_plan(
    info: ModelInfo,
    workers: Sequence[WorkerRef],
    request: PlanRequest,
    settings: EngineSettings,
    threads: int,
    draft: ModelInfo | None = None,
    cached: dict[str, tuple[int, ...]] | None = None,
    keep: Sequence[LayerPlan] = (),
) -> tuple[LayerPlan, Explanation | None]:
    """The plan `request` asks for; the planner measures with the coordinator's `threads`,
    leaves room for a draft model on the coordinator, prices loads by what the workers'
    tensor caches hold (`cached`) and keeps a plan of `keep` when that pays."""
    if request.auto:
        from quorum_tui.engine.measure import auto_plan

        explanation = await auto_plan(info, workers, settings, threads, draft, cached, keep)
        assert explanation.plan is not None
        return explanation.plan, explanation
    if request.split is not None:
        return LayerPlan.from_counts(info.n_layers, request.split, workers), None
    return LayerPlan.even(info.n_layers, workers), None
