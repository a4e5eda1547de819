"""Which plan takes over when workers die: their layers to their neighbours, if memory allows.

The dead workers' layers first go to the stage before them (the coordinator when none survives
before), which keeps every range contiguous and the other stages as they were. When that does
not fit, the planner's exact solver looks for any split over the survivors and the coordinator
that fits their free memory (with equal speeds: nothing was measured), and when none does the
error says how much is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import stage_memory, whole_model_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import INF, ClusterProfile, StageProfile, solve
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes


def merged_plan(plan: LayerPlan, dead: Sequence[WorkerRef]) -> LayerPlan:
    """`plan` without the `dead` workers, each one's layers given to the stage before it."""
    gone = {w.endpoint for w in dead}
    counts: list[int] = []
    workers: list[WorkerRef] = []
    for index, stage in enumerate(plan.stages):
        if index and stage.endpoint in gone:
            counts[-1] += stage.count
            continue
        counts.append(stage.count)
        if index:
            workers.append(WorkerRef(stage.name, stage.endpoint or ""))
    return LayerPlan.from_counts(plan.n_layers, counts, workers)


def survivor_plan(
    info: ModelInfo,
    plan: LayerPlan,
    dead: Sequence[WorkerRef],
    free: Sequence[int | None],
    settings: EngineSettings,
    draft: ModelInfo | None = None,
) -> LayerPlan:
    """A plan over the survivors that fits `free` (the coordinator's first, then each
    survivor's in plan order); QuorumError saying what is missing when none does."""
    merged = merged_plan(plan, dead)
    memory = stage_memory(info, merged, settings.ctx, settings.slots, draft)
    if all(have is None or need.total <= have for need, have in zip(memory, free, strict=True)):
        return merged
    room = free[0]
    if draft is not None and room is not None:
        room = max(room - whole_model_memory(draft, settings.ctx, settings.slots).total, 0)
    coordinator = StageProfile("coordinator", None, 1e-3, 0.0, INF, room)
    workers = tuple(
        StageProfile(w.name, w.endpoint, 1e-3, 1e-4, INF, have)
        for w, have in zip(merged.workers, free[1:], strict=True)
    )
    found = solve(info, settings.ctx, ClusterProfile(coordinator, workers), settings.slots)
    if found.plan is not None:
        return found.plan
    names = ", ".join(["the coordinator", *(w.name for w in merged.workers)])
    lost = ", ".join(w.name for w in dead)
    need = sum(m.total for m in memory)
    have = sum(h or 0 for h in free)
    if need > have:
        why = f"{human_bytes(need - have)} short"
    else:
        largest = max(info.layer_bytes, default=0)
        why = (
            "enough in all, but not in whole layers: each stage holds whole layers of up to "
            f"{human_bytes(largest)}, and no split fits every stage's room"
        )
    raise QuorumError(
        f"{lost} died and the survivors ({names}) cannot hold the model: it needs about "
        f"{human_bytes(need)}, they have {human_bytes(have)} free ({why}); bring {lost} back "
        "or add a worker with room, then Apply again"
    )
