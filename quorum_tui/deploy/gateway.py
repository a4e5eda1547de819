"""Quorum's own address in front of llama-server: the address clients keep.

Every request except Quorum's own routes is streamed through to the coordinator byte for byte,
so llama-server itself judges API keys, public paths and CORS. The gateway answers `GET
/quorum/plan` with the assignment llama.cpp realized (read from the load log; it needs the
key), and answers 503 with a JSON reason while no coordinator serves (loading, stopped, or
re-planning), as llama-server does while it loads. A client that goes away cancels its request
upstream at once. Its errors have llama-server's JSON shape and never carry a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import (
    ClientError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    TCPConnector,
    web,
)

from quorum_tui.deploy.resume import ROUTES, Diverged, Generation
from quorum_tui.errors import QuorumError
from quorum_tui.wire import PLAN_ROUTE, FailoverRecord, PlanBody, sse_events

log = logging.getLogger(__name__)

FAILOVER_WAIT = 300.0
"""Seconds an interrupted reply waits for the next coordinator (a model's reload included)."""
UPSTREAM_KEEPALIVE = 2.0
"""Seconds an idle connection to llama-server is kept: less than its own 5, after which it
closes them, so a request never goes out on a connection the server is closing."""
SHUTDOWN_WAIT = 2.0
"""Seconds the streams still running get to finish when the gateway closes."""
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
"""llama-server's default, for the preflights the gateway answers while no coordinator runs."""
FORWARDED = web.RequestKey("quorum.forwarded", bool)
"""Set on a request whose reply comes from llama-server."""
METRICS_OFF = "This server does not support metrics endpoint. Start it with `--metrics`"
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, kind: str) -> web.Response:
    """An error in llama-server's (and OpenAI's) shape."""
    body = {"error": {"code": status, "message": message, "type": kind}}
    return web.json_response(body, status=status)


class Gateway:
    """An aiohttp server that forwards to whichever coordinator serves now."""

    def __init__(self, host: str, port: int, api_key: str | None = None) -> None:
        self.hosts = [h.strip() for h in host.split(",") if h.strip()] or ["127.0.0.1"]
        """The addresses to bind (`--host a,b` binds each, as llama-server does)."""
        self.port = port
        self.api_key = api_key
        self.public_metrics = False
        """Whether clients may read /metrics (llama-server's --metrics); Quorum's watchdog
        reads the coordinator's directly either way."""
        self.upstream: str | None = None
        self.plan: PlanBody | None = None
        self.unavailable = "the coordinator is starting"
        self.recovering = False
        """A failover is under way: interrupted replies wait for the next coordinator."""
        self.on_broken: Callable[[str], Awaitable[bool]] | None = None
        """Asked when a reply from `upstream` broke off: whether a failover will follow."""
        self.failure = ""
        """Why the last coordinator died, for the replies it interrupted."""
        self.in_flight = 0
        self.failover_wait = FAILOVER_WAIT
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def host(self) -> str:
        return self.hosts[0]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self, upstream: str, plan: PlanBody) -> None:
        """Send requests to `upstream` from now on; `plan` is what /quorum/plan returns."""
        self.upstream, self.plan, self.recovering = upstream, plan, False
        self._signal()

    def pause(self, reason: str, recovering: bool = False) -> None:
        """Answer 503 with `reason` until `serve` is called again; while `recovering`,
        interrupted replies wait for the next coordinator instead of ending."""
        self.upstream, self.plan, self.unavailable = None, None, reason
        self.recovering = recovering
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_upstream(self, old: str | None) -> str | None:
        """The coordinator that replaces `old`, or None when none will (the reason is in
        `unavailable`)."""
        deadline = asyncio.get_running_loop().time() + self.failover_wait
        while self.upstream is None or self.upstream == old:
            if self.upstream is None and not self.recovering:
                return None
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                self.unavailable = (
                    f"no coordinator came back within {self.failover_wait:g} s ({self.unavailable})"
                )
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.upstream

    async def start(self) -> None:
        app = web.Application(middlewares=[self._errors], client_max_size=64 << 20)
        app.router.add_get(PLAN_ROUTE, self._plan)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_response_prepare.append(_allow_origin)
        self._session = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_WAIT,
            handler_cancellation=True,
        )
        await self._runner.setup()
        for host in self.hosts:
            site = web.TCPSite(self._runner, host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                await self.close()
                raise QuorumError(
                    f"cannot serve on {host}:{self.port}: {exc.strerror or exc}; is another "
                    "server using that port, or is the address not this machine's? Pick "
                    "another with --port or --host"
                ) from None
            if self.port == 0:
                self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving: replies waiting for a coordinator end now (cut short, with the
        reason), streams still running get SHUTDOWN_WAIT seconds to finish."""
        self.pause("Quorum is shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return error_response(exc.status, exc.reason, "invalid_request_error")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("the gateway failed on %s %s", request.method, request.path)
            return error_response(500, f"{type(exc).__name__}: {exc}", "server_error")

    def _authorized(self, request: web.Request) -> bool:
        """llama-server's rule: `Authorization: Bearer KEY`, or `X-Api-Key: KEY`."""
        if not self.api_key:
            return True
        given = request.headers.get("Authorization", "") or request.headers.get("X-Api-Key", "")
        return given.removeprefix("Bearer ") == self.api_key

    async def _plan(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return error_response(401, "Invalid API Key", "authentication_error")
        if self.plan is None:
            return error_response(503, self.unavailable, "unavailable_error")
        return web.json_response(self.plan.to_json())

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """Pass a request to the coordinator; one that arrives during a failover waits for
        the next coordinator rather than being refused."""
        upstream, session = self.upstream, self._session
        if request.method == "OPTIONS" and upstream is None:
            return _preflight(request)
        if request.path == "/metrics" and not self.public_metrics:
            if not self._authorized(request):
                return error_response(401, "Invalid API Key", "authentication_error")
            return error_response(501, METRICS_OFF, "not_supported_error")
        if upstream is None and self.recovering:
            upstream = await self.next_upstream(None)
        if upstream is None or session is None:
            return error_response(503, self.unavailable, "unavailable_error")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        kind = ROUTES.get(request.path) if request.method == "POST" else None
        generation = Generation.parse(kind, body) if kind else None
        if generation is not None:
            self.in_flight += 1
            try:
                return await self._generate(request, headers, body, generation, upstream, session)
            finally:
                self.in_flight -= 1
        try:
            reply = await _send(session, request.method, upstream + request.path_qs, headers, body)
        except ClientError as exc:
            return error_response(502, f"the coordinator did not answer: {exc}", "server_error")
        async with reply:
            request[FORWARDED] = True
            response = _stream_response(reply)
            if reply.content_length is not None:
                response.content_length = reply.content_length
            try:
                await response.prepare(request)
                async for chunk in reply.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client left; closing the reply makes llama-server free the slot
            except ClientError as exc:
                await _cut_short(request, response, str(exc) or type(exc).__name__)
        return response

    async def _generate(
        self,
        request: web.Request,
        headers: dict[str, str],
        body: bytes,
        generation: Generation,
        upstream: str,
        session: ClientSession,
    ) -> web.StreamResponse:
        """A generation, carried to the next coordinator when the one serving it dies."""
        response: web.StreamResponse | None = None
        url: str | None = upstream
        while url is not None:
            try:
                reply = await _send(session, "POST", url + request.path_qs, headers, body)
                async with reply:
                    request[FORWARDED] = True
                    streamed = reply.headers.get("Content-Type", "").startswith("text/event-stream")
                    if reply.status != 200 or not streamed:
                        data = await reply.read()
                        if reply.status == 200:
                            data = generation.whole(data)
                        return _whole_response(reply, data)
                    if response is None:
                        response = _stream_response(reply)
                        await response.prepare(request)
                    async for event in sse_events(reply.content.iter_any()):
                        out = generation.forward(event)
                        if out is not None:
                            await response.write(out)
                        if generation.done:
                            await response.write_eof()
                            return response
            except ConnectionResetError:
                return response or web.Response(status=499)
            except Diverged:
                generation.mode = "diverged"
            except ClientError:
                pass
            if generation.mode != "diverged":
                url = await self._after_break(url, generation)
            body = json.dumps(generation.resubmission()).encode() if url else body
        if response is None:
            return error_response(503, self.unavailable, "unavailable_error")
        await _cut_short(request, response, self.unavailable)
        return response

    async def _after_break(self, url: str, generation: Generation) -> str | None:
        """Wait for the coordinator that replaces the one at `url` (None: there is none)."""
        at, before = time.time(), self.plan.summary if self.plan else ""
        recovering = self.on_broken is not None and await self.on_broken(url)
        failover = FailoverRecord(at, 0, self.failure or self.unavailable, before)
        generation.interrupted(failover)
        if not recovering:
            return None
        new = await self.next_upstream(url)
        failover.reason = self.unavailable if new is None else failover.reason
        failover.plan_after = self.plan.summary if self.plan else ""
        return new


def _preflight(request: web.Request) -> web.Response:
    """A CORS preflight while no coordinator runs, answered as llama-server answers it."""
    response = web.Response(status=200, content_type="text/html")
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    response.headers["Access-Control-Allow-Headers"] = "*"
    return response


async def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """The gateway's own replies carry llama-server's default CORS header; llama-server's
    replies carry what its --cors-origins allows, and nothing is added to them."""
    if not request.get(FORWARDED, False) and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")


def _stream_response(reply: ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(status=reply.status, reason=reply.reason)
    for key, value in reply.headers.items():
        if key.lower() not in HOP_BY_HOP:
            response.headers.add(key, value)
    return response


def _whole_response(reply: ClientResponse, data: bytes) -> web.Response:
    response = web.Response(status=reply.status, reason=reply.reason, body=data)
    for key, value in reply.headers.items():
        if key.lower() not in HOP_BY_HOP and key.lower() != "content-type":
            response.headers.add(key, value)
    response.content_type = reply.content_type
    return response


async def _send(
    session: ClientSession, method: str, url: str, headers: dict[str, str], body: bytes
) -> ClientResponse:
    """The request to llama-server; one that found its kept-alive connection closed before
    any answer (the server never read it) goes again on a new connection."""
    try:
        return await session.request(method, url, headers=headers, data=body)
    except ServerDisconnectedError:
        return await session.request(method, url, headers=headers, data=body)


async def _cut_short(request: web.Request, response: web.StreamResponse, why: str) -> None:
    """The coordinator died mid-reply and none took over: an event stream gets an error
    event, and the connection closes without the body's end, so no client takes it for a
    whole reply."""
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        message = f"the coordinator stopped mid-reply: {why}"
        event = {"error": {"code": 502, "message": message, "type": "server_error"}}
        with contextlib.suppress(ConnectionResetError):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
    if request.transport is not None:
        request.transport.close()
