"""Quorum's wire formats, each read and written in this one place.

- server-sent events, as llama-server and Quorum's gateway stream them (`sse_events` splits a
  byte stream into events, `sse_data` reads one event's data);
- the failover record a reply carries in its last event when it lived through a coordinator's
  restart (`FailoverRecord`, under `"quorum": {"failovers": [...]}`);
- the body of `GET /quorum/plan` (`PlanBody`);
- llama-server's Prometheus metrics (`parse_metrics`, with prometheus_client's parser).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PLAN_ROUTE = "/quorum/plan"
DONE = b"[DONE]"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


# --- server-sent events -----------------------------------------------------------------------


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Whole server-sent events (each ending with a blank line) out of a byte stream; a last
    event without its blank line is given as it is."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        while True:
            cut = pending.find(b"\n\n")
            if cut < 0:
                break
            yield pending[: cut + 2]
            pending = pending[cut + 2 :]
    if pending.strip():
        yield pending


def sse_data(event: bytes | str) -> bytes | None:
    """The data of one event (`data: ...` lines joined), or None when it has none."""
    raw = event.encode() if isinstance(event, str) else event
    lines = [line[5:].lstrip() for line in raw.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def sse_json(data: bytes) -> dict[str, Any] | None:
    """An event's data as a JSON object (None: not one, or `[DONE]`)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def sse_line(payload: dict[str, Any]) -> bytes:
    """One event carrying `payload`."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


# --- the failover record ----------------------------------------------------------------------


@dataclass
class FailoverRecord:
    """One coordinator restart a reply lived through."""

    at: float
    """When the coordinator died (seconds since the epoch)."""
    after_tokens: int
    reason: str
    plan_before: str
    plan_after: str = ""
    resumed: str = ""
    """regenerated (exact) or continued (from the text so far); empty when it did not."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = time.strftime(TIME_FORMAT, time.localtime(self.at))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailoverRecord:
        at = data.get("at")
        when = time.mktime(time.strptime(at, TIME_FORMAT)) if isinstance(at, str) else 0.0
        return cls(
            at=when,
            after_tokens=int(data.get("after_tokens") or 0),
            reason=str(data.get("reason") or ""),
            plan_before=str(data.get("plan_before") or ""),
            plan_after=str(data.get("plan_after") or ""),
            resumed=str(data.get("resumed") or ""),
        )

    @property
    def when(self) -> str:
        return time.strftime(TIME_FORMAT, time.localtime(self.at))


def with_failovers(payload: dict[str, Any], failovers: Sequence[FailoverRecord]) -> None:
    """Put `failovers` into a reply's last event or JSON body."""
    payload["quorum"] = {"failovers": [f.to_json() for f in failovers]}


def failovers_of(payload: dict[str, Any]) -> tuple[FailoverRecord, ...]:
    """The failovers an event or a reply carries (none when it lived through none)."""
    quorum = payload.get("quorum")
    records = quorum.get("failovers") if isinstance(quorum, dict) else None
    if not isinstance(records, list):
        return ()
    return tuple(FailoverRecord.from_json(r) for r in records if isinstance(r, dict))


# --- the plan body ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageBody:
    name: str
    endpoint: str | None
    layers: tuple[int, int] | None
    """First and last layer, or None for a stage without layers."""


@dataclass(frozen=True)
class PlanBody:
    """What `GET /quorum/plan` returns: the plan and the assignment llama.cpp realized."""

    model: str
    summary: str
    stages: tuple[StageBody, ...]
    output_stage: int
    planned: tuple[int, ...]
    realized: tuple[int, ...]
    load_s: float
    away: tuple[str, ...] = ()
    """Workers lost to failovers, not back in the plan yet."""

    @property
    def realized_by_name(self) -> list[str]:
        return [self.stages[i].name for i in self.realized]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "summary": self.summary,
            "stages": [
                {"name": s.name, "endpoint": s.endpoint, "layers": list(s.layers or ()) or None}
                for s in self.stages
            ],
            "output_stage": self.output_stage,
            "planned": list(self.planned),
            "realized": list(self.realized),
            "realized_by_name": self.realized_by_name,
            "load_s": self.load_s,
            "away": list(self.away),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanBody:
        stages = tuple(
            StageBody(
                str(s["name"]),
                s.get("endpoint"),
                (int(s["layers"][0]), int(s["layers"][1])) if s.get("layers") else None,
            )
            for s in data.get("stages", [])
        )
        return cls(
            model=str(data.get("model", "")),
            summary=str(data.get("summary", "")),
            stages=stages,
            output_stage=int(data.get("output_stage", 0)),
            planned=tuple(int(x) for x in data.get("planned", [])),
            realized=tuple(int(x) for x in data.get("realized", [])),
            load_s=float(data.get("load_s", 0.0)),
            away=tuple(str(x) for x in data.get("away", [])),
        )

    def line(self) -> str:
        """`coordinator 0, w1 1-2, w2 3-4+out`: the layers each stage holds."""
        parts = []
        for index, stage in enumerate(self.stages):
            first, last = stage.layers or (-1, -1)
            span = "-" if not stage.layers else str(first) if first == last else f"{first}-{last}"
            out = "+out" if index == self.output_stage else ""
            parts.append(f"{stage.name} {span}{out}")
        return ", ".join(parts)


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """The llama-server metrics Quorum watches (None: the server did not report it)."""

    decodes: float | None = None
    processing: float | None = None
    deferred: float | None = None
    values: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> Metrics:
    """llama-server's `/metrics` (Prometheus text; the `llamacpp:` prefix dropped)."""
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name.removeprefix("llamacpp:")] = float(sample.value)
    except ValueError:
        return Metrics()
    return Metrics(
        decodes=values.get("n_decode_total"),
        processing=values.get("requests_processing"),
        deferred=values.get("requests_deferred"),
        values=values,
    )
