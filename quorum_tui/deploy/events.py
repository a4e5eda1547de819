"""What a deployment reports as it goes: typed events the CLI prints and the app shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quorum_tui.cluster.events import HostEvent
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
    """Clients can use the model at `url` (Quorum's endpoint, with /v1 after it)."""

    url: str
    plan: LayerPlan
    realized: tuple[int, ...]


@dataclass(frozen=True)
class Stopped:
    """The coordinator is gone: `reason` says why, None when it was asked to stop."""

    plan: LayerPlan
    reason: str | None


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
    HostEvent | Progress | WorkersReady | ModelReady | Planned | Loading | Loaded | Ready | Serving
    | Stopped | FailingOver | FailedOver | WorkerBack
)  # fmt: skip
EventSink = Callable[[DeployEvent], None]
