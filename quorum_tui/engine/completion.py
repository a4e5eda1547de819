"""Stream one generation from llama-server's native `/completion`, with its token ids and timings.

`quorum run` and the benchmarks use this rather than the OpenAI routes: the native route gives
the ids of the generated tokens and the server's own prompt and decode timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from quorum_tui.errors import QuorumError
from quorum_tui.wire import FailoverRecord, failovers_of, sse_data, sse_events, sse_json


@dataclass(frozen=True)
class Piece:
    """Text of the next token(s) and their ids."""

    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Completed:
    """The server ended the generation; `stop_type` says why (eos, limit, word)."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    """Seconds from sending the request to the first token, measured here."""
    tokens_per_s: float
    """The server's decode rate (tokens after the prompt)."""
    prompt_per_s: float
    stop_type: str
    tokens: tuple[int, ...] = field(default=())
    failovers: tuple[FailoverRecord, ...] = ()
    """Coordinator restarts the generation lived through (Quorum's endpoint says)."""


@dataclass
class CompletionRequest:
    prompt: str | list[int]
    n_predict: int = 64
    temperature: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "n_predict": self.n_predict,
            "temperature": self.temperature,
            "seed": self.seed,
            "stream": True,
            "return_tokens": True,
            "cache_prompt": False,
            **self.extra,
        }


async def stream_completion(
    url: str, request: CompletionRequest, api_key: str | None = None, timeout: float = 600.0
) -> AsyncIterator[Piece | Completed]:
    """Pieces as they arrive, then Completed; a stream cut short raises QuorumError."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.perf_counter()
    first: float | None = None
    ids: list[int] = []
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0)) as http,
            http.stream(
                "POST", f"{url}/completion", json=request.body(), headers=headers
            ) as response,
        ):
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                raise QuorumError(f"the coordinator refused the request: {_message(text)}")
            async for event in sse_events(response.aiter_bytes()):
                payload = sse_data(event)
                data = sse_json(payload) if payload is not None else None
                if data is None:
                    continue
                if "error" in data:
                    raise QuorumError(f"the coordinator failed: {_message(payload or b'')}")
                tokens = tuple(int(t) for t in data.get("tokens") or ())
                if data.get("content") or tokens:
                    first = first or time.perf_counter()
                    ids.extend(tokens)
                    yield Piece(data.get("content", ""), tokens)
                if data.get("stop"):
                    timings = data.get("timings") or {}
                    yield Completed(
                        prompt_tokens=int(data.get("tokens_evaluated", 0)),
                        completion_tokens=int(data.get("tokens_predicted", 0)),
                        ttft_s=(first or time.perf_counter()) - started,
                        tokens_per_s=float(timings.get("predicted_per_second", 0.0)),
                        prompt_per_s=float(timings.get("prompt_per_second", 0.0)),
                        stop_type=str(data.get("stop_type", "")),
                        tokens=tuple(ids),
                        failovers=failovers_of(data),
                    )
                    return
    except httpx.HTTPError as exc:
        raise QuorumError(
            f"the coordinator's stream broke off: {exc or type(exc).__name__}"
        ) from None
    raise QuorumError("the coordinator's stream ended before the generation was complete")


def _message(raw: bytes | str) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        error = json.loads(text).get("error", {})
        return str(error.get("message", text)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return text.strip() or "no reason given"
