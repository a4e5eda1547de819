"""What a deployment reports as it goes: typed events the CLI prints and the app shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from quorum_tui.cluster.events import HostEvent
from quorum_tui.deploy.placement import WeightsPlaced
from quorum_tui.deploy.pool import WorkerEvent
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import Explanation
from quorum_tui.engine.supervisor import Loaded, Loading, Ready
from quorum_tui.models.download import Progress


@dataclass(frozen=True)
class WorkersReady:
    """The workers the plan may use, with anything the user should be warned about."""

    workers: tuple[WorkerRef, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelReady:
    path: Path
    info: ModelInfo


@dataclass(frozen=True)
class Planned:
    """The plan to load; `explanation` is the planner's when it chose it (`--auto`)."""

    plan: LayerPlan
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Serving:
    """Clients can use the model at `url` (Quorum's endpoint, with /v1 after it), under the
    name `model` (its id in /v1/models)."""

    url: str
    plan: LayerPlan
    realized: tuple[int, ...]
    model: str


class Phase(StrEnum):
    """Where a deployment is. Only `stopped` is final: a failure ends in `waiting` (it tries
    again as workers return) or `failed` (a start that was asked for did not come up)."""

    IDLE = "idle"
    """No coordinator, none asked for (at first, or after a stop)."""
    LOADING = "loading"
    SERVING = "serving"
    RECOVERING = "recovering"
    """A worker died (or the coordinator did): re-planning on the survivors."""
    REJOINING = "rejoining"
    """Workers lost to failovers are back: restoring the plan they were in."""
    WAITING = "waiting"
    """Nothing can serve now; Quorum tries again as workers come back, with a back-off."""
    FAILED = "failed"
    """The start that was asked for did not come up; nothing is retried until asked."""
    STOPPED = "stopped"


@dataclass(frozen=True)
class PhaseChanged:
    """The deployment moved to `phase`; `reason` says why (None: it was asked to)."""

    phase: Phase
    previous: Phase
    reason: str | None
    plan: LayerPlan | None


@dataclass(frozen=True)
class RejoinFailed:
    """Returning workers could not be used again; the plan that served goes on serving, and
    the rejoin is tried again after `retry_s` seconds."""

    workers: tuple[WorkerRef, ...]
    reason: str
    retry_s: float


@dataclass(frozen=True)
class FailingOver:
    """The coordinator died with `dead` workers; replies in flight wait for a new one."""

    plan: LayerPlan
    dead: tuple[WorkerRef, ...]
    reason: str
    at: float


@dataclass(frozen=True)
class FailedOver:
    """`plan` serves in place of `before` (`seconds` after the death); replies resumed."""

    before: LayerPlan
    plan: LayerPlan
    dead: tuple[WorkerRef, ...]
    seconds: float


@dataclass(frozen=True)
class WorkerBack:
    """A worker that died answers again (for `quiet_s` seconds); `rejoin` brings it back."""

    worker: WorkerRef
    quiet_s: float


DeployEvent = (
    HostEvent | WorkerEvent | Progress | WorkersReady | ModelReady | Planned | Loading | Loaded
    | Ready | Serving | PhaseChanged | FailingOver | FailedOver | WorkerBack | RejoinFailed
    | WeightsPlaced
)  # fmt: skip
EventSink = Callable[[DeployEvent], None]
