"""Typed messages from the app's workers back to the event loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message

from quorum_tui.deploy.events import DeployEvent
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef


class ModelLoaded(Message):
    def __init__(self, spec: str, path: Path, info: ModelInfo) -> None:
        super().__init__()
        self.spec, self.path, self.info = spec, path, info


class ModelPreviewed(Message):
    def __init__(self, spec: str, text: str) -> None:
        super().__init__()
        self.spec, self.text = spec, text


class CachedModels(Message):
    def __init__(self, rows: list[tuple[str, int, str]]) -> None:
        super().__init__()
        self.rows = rows


class Failed(Message):
    """A background task failed in a way the user should read."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__()
        self.what, self.reason = what, reason


class Note(Message):
    """A line for the log view."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class DemoStarted(Message):
    def __init__(self, workers: list[WorkerRef]) -> None:
        super().__init__()
        self.workers = workers


@dataclass
class Sample:
    """One host's measurements from a sampling pass (None: not measured this time)."""

    name: str
    endpoint: str | None = None
    """The host's worker endpoint when its state was sampled: a state (and its reason) about
    another endpoint is stale and dropped."""
    state: str | None = None
    reason: str | None = None
    cpu: float | None = None
    used: int | None = None
    total: int | None = None
    free: int | None = None
    rtt_ms: float | None = None


class HostsSampled(Message):
    def __init__(self, samples: list[Sample], local_free: int | None) -> None:
        super().__init__()
        self.samples, self.local_free = samples, local_free


class Deployed(Message):
    """An event of the app's deployment (engine and deploy events, all dataclasses)."""

    def __init__(self, event: DeployEvent) -> None:
        super().__init__()
        self.event = event


class CoordinatorStopped(Message):
    """The coordinator died (`reason`), or failed before starting."""

    def __init__(self, plan: LayerPlan, reason: str) -> None:
        super().__init__()
        self.plan, self.reason = plan, reason


class DownloadProgress(Message):
    def __init__(self, done: int, total: int | None, text: str) -> None:
        super().__init__()
        self.done, self.total, self.text = done, total, text


class DownloadFinished(Message):
    def __init__(self, text: str, spec: str | None) -> None:
        super().__init__()
        self.text, self.spec = text, spec


class AutoPlanned(Message):
    """The planner measured the stages and proposes `plan` (`lines` explain it)."""

    def __init__(self, key: Any, plan: LayerPlan, lines: list[str]) -> None:
        super().__init__()
        self.key, self.plan, self.lines = key, plan, lines
