"""Generations the gateway carries across a coordinator restart (failover).

A generation request (chat, completions, llama-server's native completion) is streamed through
byte for byte, and every event kept. When the coordinator dies mid-reply and a new one serves,
the request goes again, one of two ways:

- regenerate (greedy requests, when it is cheap): the same request again; at temperature 0 the
  new coordinator computes the same tokens in the same single-token steps, so its first text
  equals what the client already has: that part is checked and dropped, and the rest
  forwarded. Re-submitting the generated tokens as a prompt instead would compute their KV
  cache in one batch, in another order of operations, and a near-tie can flip later;
- continue (sampled requests, long replies, or a regenerated text that differs): the prompt
  plus the text so far (for chat, the partial reply as the assistant's turn, which llama-server
  continues), with the rest of the token budget.

The final event (or the JSON reply) gains `"quorum": {"failovers": [...]}`: when, after how
many tokens, why, which plans served it, and how it resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quorum_tui.wire import DONE, FailoverRecord, sse_data, sse_json, sse_line, with_failovers

ROUTES = {
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/v1/completions": "completions",
    "/completions": "completions",
    "/completion": "native",
}
REGENERATE_LIMIT = 256
"""Tokens a greedy reply may have sent and still be regenerated rather than continued."""


class Diverged(Exception):
    """The regenerated reply is not the one the client already has."""


@dataclass
class Generation:
    """One generation request and what its client has received so far."""

    kind: str
    body: dict[str, Any]
    sent: list[str] = field(default_factory=list)
    failovers: list[FailoverRecord] = field(default_factory=list)
    done: bool = False
    mode: str = "first"
    """first (the original request), regenerated or continued (after a failover)."""
    _raw: list[bytes] = field(default_factory=list)
    """The first attempt's events, read only after a failover (the common path parses none)."""
    _skip: str = ""
    _seen: str = ""
    _ids: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, kind: str, raw: bytes) -> Generation | None:
        """The request as a Generation, or None when it cannot be resumed."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict) or body.get("n", 1) != 1:
            return None
        return cls(kind, body)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def text(self) -> str:
        return "".join(self.sent)

    @property
    def greedy(self) -> bool:
        temperature = self.body.get("temperature")
        return temperature is not None and float(temperature) <= 0

    def interrupted(self, failover: FailoverRecord) -> None:
        """The coordinator serving this reply is gone: remember what the client has."""
        if self.mode == "first":
            parsed = [d for d in (sse_json(p) for p in self._raw) if d is not None]
            self.sent = [self._text(d) for d in parsed]
            if parsed and self.kind != "native":
                self._ids = {k: parsed[0][k] for k in ("id", "created") if k in parsed[0]}
        elif self.mode == "regenerated" and self._skip:
            self.mode = "diverged" if not self._skip.startswith(self._seen) else self.mode
        failover.after_tokens = len([p for p in self.sent if p])
        self.failovers.append(failover)

    def resubmission(self) -> dict[str, Any]:
        """The request to send to the new coordinator (and how the reply will resume)."""
        if self.greedy and len(self.sent) <= REGENERATE_LIMIT and self.mode != "diverged":
            self.mode, self._skip, self._seen = "regenerated", self.text, ""
            self.failovers[-1].resumed = self.mode
            return self.body
        self.mode = "continued"
        self.failovers[-1].resumed = self.mode
        body = dict(self.body)
        budget_key = "n_predict" if self.kind == "native" else "max_tokens"
        budget = body.get(budget_key) or body.get("max_completion_tokens")
        if isinstance(budget, int) and budget > 0:
            body[budget_key] = max(budget - len(self.sent), 1)
            body.pop("max_completion_tokens", None)
        if self.kind == "chat":
            body["messages"] = [
                *body.get("messages", []),
                {"role": "assistant", "content": self.text},
            ]
        elif isinstance(body.get("prompt"), str):
            body["prompt"] = body["prompt"] + self.text
        return body

    def forward(self, event: bytes) -> bytes | None:
        """The bytes of one server-sent event to pass on (None: drop it); raises Diverged."""
        payload = sse_data(event)
        if payload is None:
            return event
        if payload == DONE:
            self.done = True
            return event
        if self.mode == "first":
            self._raw.append(payload)
            self.done = self.done or (self.kind == "native" and b'"stop":true' in payload)
            return event
        data = sse_json(payload)
        if data is None:
            return event
        piece = self._text(data)
        if self.mode == "regenerated" and self._skip:
            self._seen += piece
            if not self._skip.startswith(self._seen) and not self._seen.startswith(self._skip):
                raise Diverged
            if len(self._seen) <= len(self._skip):
                if self._finished(data) and self._seen == self._skip:
                    return self._emit(data, "")
                return None
            piece = self._seen[len(self._skip) :]
            self._skip = ""
            return self._emit(data, piece)
        if self.mode == "continued" and not piece and not self._finished(data):
            return None
        return self._emit(data, piece)

    def _emit(self, data: dict[str, Any], piece: str) -> bytes:
        self._set_text(data, piece)
        self.sent.append(piece)
        data.update(self._ids)
        if self._finished(data):
            self.done = self.kind == "native"
            with_failovers(data, self.failovers)
        return sse_line(data)

    def whole(self, raw: bytes) -> bytes:
        """A non-streamed reply, with the failovers it lived through."""
        data = sse_json(raw)
        if data is None or not self.failovers:
            return raw
        with_failovers(data, self.failovers)
        return json.dumps(data, ensure_ascii=False).encode()

    def _text(self, data: dict[str, Any]) -> str:
        if self.kind == "native":
            return str(data.get("content") or "")
        choice = (data.get("choices") or [{}])[0]
        if self.kind == "chat":
            return str((choice.get("delta") or {}).get("content") or "")
        return str(choice.get("text") or "")

    def _set_text(self, data: dict[str, Any], piece: str) -> None:
        if self.kind == "native":
            data["content"] = piece
            return
        choice = (data.get("choices") or [{}])[0]
        if self.kind == "chat":
            delta = choice.setdefault("delta", {})
            if piece or "content" in delta:
                delta["content"] = piece
        else:
            choice["text"] = piece

    def _finished(self, data: dict[str, Any]) -> bool:
        if self.kind == "native":
            return bool(data.get("stop"))
        return bool((data.get("choices") or [{}])[0].get("finish_reason"))
