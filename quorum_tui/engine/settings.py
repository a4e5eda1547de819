"""The engine settings every entry point shares: context, slots, threads, repacking, and
llama-server's own options passed through.

`quorum run`, `serve`, `bench`, the demo, the app and the planner's measurements all take
their coordinator settings from `EngineSettings`, so the configuration the planner measures is
the one that serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import psutil

from quorum_tui.engine.server_args import ServerArgs
from quorum_tui.engine.speculation import MODES as SPEC_MODES
from quorum_tui.errors import QuorumError

DEFAULT_CTX = 2048
DEFAULT_SLOTS = 4
MAX_SLOTS = 64


def cores() -> int:
    """Physical cores when known (ggml's threads spin, so hyperthreads add little)."""
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def shared_threads(local_workers: int, total: int | None = None) -> int:
    """Threads for one process when `local_workers` workers share this machine with it.

    For one sequence only one stage computes at a time, but ggml's threads spin while they
    wait, so processes that together ask for more threads than there are cores slow each
    other down: each gets an equal share, at least one.
    """
    return max(1, (total or cores()) // (1 + max(local_workers, 0)))


@dataclass(frozen=True)
class EngineSettings:
    """How the coordinator runs. `threads` 0 means a share of this machine's cores."""

    ctx: int = DEFAULT_CTX
    """Tokens of context per slot."""
    slots: int = DEFAULT_SLOTS
    """Requests served at once; the KV cache holds `ctx` tokens for each."""
    threads: int = 0
    repack: bool = True
    spec: str = "off"
    """Speculative decoding: off, ngram (no second model) or draft (with `draft`)."""
    draft: str | None = None
    """The draft model's spec, used when `spec` is draft."""
    server_args: tuple[str, ...] = ()
    """llama-server's own options, passed through (engine.server_args)."""

    def __post_init__(self) -> None:
        ServerArgs.parse(self.server_args)
        if self.spec not in SPEC_MODES:
            raise QuorumError(f"--spec {self.spec}: give one of {', '.join(SPEC_MODES)}")
        if self.spec == "draft" and not self.draft:
            raise QuorumError("--spec draft needs --draft MODEL (a small model of the same family)")
        if self.ctx < 16:
            raise QuorumError(f"--ctx {self.ctx}: the context must be at least 16 tokens")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise QuorumError(f"--slots {self.slots}: give 1 to {MAX_SLOTS} slots")
        if self.threads < 0:
            raise QuorumError(f"--threads {self.threads}: give a positive count, or 0 for auto")

    @property
    def server(self) -> ServerArgs:
        """The pass-through options, read."""
        return ServerArgs.parse(self.server_args)

    def with_server_args(self, first: Sequence[str]) -> EngineSettings:
        """These settings with `first` (the cluster file's options) before their own, which
        win where both set an option."""
        return replace(self, server_args=(*first, *self.server_args)) if first else self

    def coordinator_threads(self, local_workers: int) -> int:
        """The coordinator's threads: as set, or a share of the cores with local workers."""
        return self.threads or shared_threads(local_workers)
