"""Fast stand-ins for the lifecycle's property test: RPC workers and coordinators that start
and die in milliseconds, over real sockets.

- `FakeWorker` listens on a fixed loopback port and answers the RPC probe (HELLO, one device,
  1 GiB free); `kill()` closes it and every connection to it, `revive()` listens again on the
  same port.
- `FakeCoordinator` holds a connection to each worker of its plan, as llama-server holds its RPC
  connections, and serves llama-server's streaming `/v1/completions`: a reply is a function of
  the prompt alone (greedy), so a resumed reply can be checked word for word. When one of its
  workers goes, it aborts, as llama.cpp does: its server closes every connection at once.
- `FakeLauncher` makes them for a `Deployment`, remembers every one, and can make the next
  load fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from quorum_tui.engine.llama_server import ServerOptions
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.probe import (
    CMD_DEVICE_COUNT,
    CMD_GET_DEVICE_MEMORY,
    CMD_HELLO,
    PROTOCOL,
    probe_all,
)
from quorum_tui.engine.supervisor import CoordinatorEvent, Explain, Loaded, Loading, Ready

TOKEN_DELAY = 0.004
"""Seconds between two streamed tokens."""


def reply_text(prompt: str, tokens: int) -> str:
    """What a fake coordinator answers to `prompt` with `tokens` tokens (greedy)."""
    return "".join(f" {prompt}-{k}" for k in range(tokens))


class FakeWorker:
    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def revive(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def kill(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        for writer in list(self.connections):
            writer.transport.abort()
        self.connections.clear()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            while True:
                cmd, size = struct.unpack("<BQ", await reader.readexactly(9))
                await reader.readexactly(size)
                if cmd == CMD_HELLO:
                    reply = bytes(PROTOCOL) + bytes(25)
                elif cmd == CMD_DEVICE_COUNT:
                    reply = struct.pack("<I", 1)
                elif cmd == CMD_GET_DEVICE_MEMORY:
                    reply = struct.pack("<QQ", 1 << 30, 2 << 30)
                else:
                    return
                writer.write(struct.pack("<Q", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections.discard(writer)
            writer.transport.abort()


@dataclass(eq=False)
class FakeCoordinator:
    plan: LayerPlan
    options: ServerOptions
    fail_load: bool = False
    dead: list[WorkerRef] = field(default_factory=list)
    cpu: None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_on_purpose: bool = False
    lost_link: bool = False
    _runner: web.AppRunner | None = None
    _links: list[asyncio.StreamWriter] = field(default_factory=list)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    async def start(self) -> None:
        for worker in self.plan.workers:
            host, port = worker.endpoint.rsplit(":", 1)
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                self.exited.set()
                return
            self._links.append(writer)
            self._watchers.append(asyncio.create_task(self._watch(reader)))
        if self.fail_load:
            self.exited.set()
            return
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.options.port, reuse_address=True).start()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """A worker's connection closed: abort, as llama.cpp does."""
        with contextlib.suppress(ConnectionError):
            await reader.read()
        self.lost_link = self.lost_link or not self.stopped_on_purpose
        await self._abort()

    def lost_a_worker(self) -> bool:
        return self.lost_link

    async def _abort(self) -> None:
        if self.exited.is_set():
            return
        self.exited.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            for site in list(runner.sites):
                server = getattr(site, "_server", None)
                if server is not None:
                    server.close()
            server = runner.server
            if server is not None:
                for connection in list(server.connections):
                    if connection.transport is not None:
                        connection.transport.abort()
            await runner.cleanup()
        for writer in self._links:
            writer.transport.abort()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, tokens = str(body["prompt"]), int(body["max_tokens"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for k in range(tokens):
            await asyncio.sleep(TOKEN_DELAY)
            last = k == tokens - 1
            choice = {"text": f" {prompt}-{k}", "index": 0,
                      "finish_reason": "length" if last else None}  # fmt: skip
            await response.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def events(self, stall_check: float = 10.0) -> AsyncIterator[CoordinatorEvent]:
        started = time.perf_counter()
        yield Loading(self.plan, ("fake",), Path("/dev/null"), "CPU kernels: fake")
        if self.exited.is_set():
            return
        realized = tuple(self.plan.assignment())
        yield Loaded(self.plan, realized, time.perf_counter() - started)
        yield Ready(self.url)
        await self.exited.wait()

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped_on_purpose = True
        await self._abort()
        for task in self._watchers:
            task.cancel()

    async def failure_reason(self) -> str:
        results = await probe_all([w.endpoint for w in self.plan.workers], timeout=1.0)
        self.dead = [w for w, r in zip(self.plan.workers, results, strict=True) if not r.ok]
        if self.dead:
            return "the coordinator stopped because " + "; ".join(
                f"worker {w.name} ({w.endpoint}) is unreachable" for w in self.dead
            )
        return "the coordinator stopped: it could not load the model"

    @property
    def running(self) -> bool:
        return not self.exited.is_set()


@dataclass
class FakeLauncher:
    made: list[FakeCoordinator] = field(default_factory=list)
    fail_next: bool = False

    async def __call__(
        self,
        model: Path,
        plan: LayerPlan,
        options: ServerOptions,
        device_counts: list[int] | None,
        explain: Explain,
    ) -> FakeCoordinator:
        coordinator = FakeCoordinator(plan, options, fail_load=self.fail_next)
        self.fail_next = False
        self.made.append(coordinator)
        return coordinator
