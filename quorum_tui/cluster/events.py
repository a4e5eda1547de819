"""What bring-up reports about each host, as typed events a CLI or TUI renders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

HostState = Literal[
    "connecting",
    "connected",
    "auth-failed",
    "host-key-unknown",
    "host-key-changed",
    "unreachable",
    "installing",
    "worker-up",
    "worker-down",
]

FAILED_STATES: frozenset[str] = frozenset(
    {"auth-failed", "host-key-unknown", "host-key-changed", "unreachable", "worker-down"}
)


@dataclass(frozen=True)
class HostEvent:
    """A host changed state (`line` is None), or an install/launch printed a progress line."""

    host: str
    state: HostState
    reason: str
    line: str | None = None


@dataclass(frozen=True)
class HostKeyQuestion:
    """An SSH host key not in known_hosts: the user decides whether to trust it."""

    host: str
    address: str
    port: int
    algorithm: str
    fingerprint: str
    known_hosts: str


EventCallback = Callable[[HostEvent], None]
HostKeyPrompt = Callable[[HostKeyQuestion], Awaitable[bool]]


class HostFailure(Exception):
    """A host could not be brought to the next state; `state` says which failure."""

    def __init__(self, state: HostState, reason: str) -> None:
        super().__init__(reason)
        self.state: HostState = state
        self.reason = reason
