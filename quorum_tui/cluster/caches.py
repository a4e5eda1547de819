"""The coordinator's side of the hosts' tensor caches: cluster.hostcache run on a host over
its SSH connection (or in this process, for a cache on this machine), with typed answers."""

from __future__ import annotations

import asyncio
import io
import json
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncssh

from quorum_tui.cluster import hostcache
from quorum_tui.cluster.events import HostFailure, HostKeyPrompt
from quorum_tui.cluster.hostprobe import CACHE_SH, RUNTIME_NAME
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.cluster.sessions import HostSession, command_failures, connect
from quorum_tui.engine.weights import CachedTensor, WeightsManifest
from quorum_tui.errors import QuorumError

FILL_TIMEOUT = 24 * 3600.0
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Source:
    """Where a host's fill reads the tensors: `dir` (its own copy of the model's files), `url`
    (range requests; `{file}` stands for each file's name), `stream` (the coordinator) or
    `none` (only check and record what is there)."""

    kind: str
    where: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "dir":
            return {"kind": "dir", "dir": self.where}
        if self.kind == "url":
            return {"kind": "url", "url": self.where, "headers": dict(self.headers)}
        return {"kind": self.kind}


@dataclass(frozen=True)
class FillResult:
    model: str
    tensors: int
    present: int
    present_bytes: int
    """Bytes of the tensors that were in the cache before the fill."""
    written: int
    bytes: int
    evicted: int
    source: str


@dataclass(frozen=True)
class ModelEntry:
    model: str
    files: int
    bytes: int
    used: float


@dataclass(frozen=True)
class CacheListing:
    dir: str
    models: tuple[ModelEntry, ...]
    other_files: int
    other_bytes: int
    free: int


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    bytes: int
    bad: tuple[str, ...]
    unknown: int


@dataclass(frozen=True)
class HostCache:
    """One cache: a host's (over `session`) or a directory on this machine (`local`)."""

    name: str
    session: HostSession | None = None
    local: Path | None = None

    async def call(
        self,
        command: str,
        request: dict[str, Any],
        payload: Callable[[], AsyncIterator[bytes]] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Run a hostcache command; its `done` answer, or QuorumError naming the host."""
        if self.session is None:
            return await self._call_here(command, request, payload, progress)
        return await self._call_there(self.session, command, request, payload, progress)

    async def _call_here(
        self,
        command: str,
        request: dict[str, Any],
        payload: Callable[[], AsyncIterator[bytes]] | None,
        progress: Progress | None,
    ) -> dict[str, Any]:
        """The command in this process; a stream's bytes are gathered first (a cache here is
        never far from the model, so only tests stream to one)."""
        assert self.local is not None
        cache = str(self.local)
        stream = io.BytesIO(b"".join([b async for b in payload()]) if payload else b"")
        loop = asyncio.get_running_loop()

        def emit(event: dict[str, Any]) -> None:
            if progress is not None and event.get("event") == "progress":
                loop.call_soon_threadsafe(progress, event["done"], event["total"])

        try:
            return await asyncio.to_thread(hostcache.run, command, cache, request, stream, emit)
        except hostcache.CacheError as exc:
            raise QuorumError(f"{self.name}: {exc}") from None
        except (ValueError, KeyError, OSError) as exc:
            raise QuorumError(f"{self.name}: the tensor cache {command} failed: {exc!r}") from None

    async def _call_there(
        self,
        session: HostSession,
        command: str,
        request: dict[str, Any],
        payload: Callable[[], AsyncIterator[bytes]] | None,
        progress: Progress | None,
    ) -> dict[str, Any]:
        line = (json.dumps(request) + "\n").encode()
        done: dict[str, Any] | None = None
        error = ""
        lines: list[str] = []

        async def talk() -> None:
            nonlocal done, error
            async with session.conn.create_process(
                remote_command(command), encoding=None, stderr=asyncssh.STDOUT
            ) as proc:
                try:
                    proc.stdin.write(line)
                    if payload is not None:
                        async for block in payload():
                            proc.stdin.write(block)
                            await proc.stdin.drain()
                    proc.stdin.write_eof()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                async for raw in proc.stdout:
                    text = raw.decode(errors="replace").strip()
                    lines.append(text)
                    try:
                        event = json.loads(text)
                    except ValueError:
                        continue
                    kind = event.get("event") if isinstance(event, dict) else None
                    if kind == "progress" and progress is not None:
                        progress(int(event["done"]), int(event["total"]))
                    elif kind == "done":
                        done = event
                    elif kind == "error":
                        error = str(event.get("message", ""))
                await proc.wait()

        with command_failures(FILL_TIMEOUT):
            await talk()
        if done is not None:
            return done
        if error:
            raise QuorumError(f"{self.name}: {error}")
        tail = " / ".join(x for x in lines[-3:] if x) or "no output"
        raise QuorumError(f"{self.name}: the tensor cache command {command} failed: {tail}")

    # ----- typed commands

    async def fill(
        self,
        manifest: WeightsManifest,
        tensors: Sequence[CachedTensor],
        source: Source,
        limit_bytes: int = 0,
        progress: Progress | None = None,
        read_here: Path | None = None,
    ) -> FillResult:
        """Bring `tensors` into the cache from `source`. A `stream` source sends the bytes
        the host lacks from the model files beside `read_here` (this machine's copy)."""
        request = fill_request(manifest, tensors, source, limit_bytes)
        payload = None
        if source.kind == "stream":
            assert read_here is not None
            lacking = set((await self.call("missing", request))["missing"])
            sending = [t for t in tensors if t.fnv in lacking]
            request["send"] = [t.fnv for t in sending]

            def payload() -> AsyncIterator[bytes]:
                return read_tensors(read_here, sending)

        answer = await self.call("fill", request, payload, progress)
        return FillResult(**{k: answer[k] for k in FillResult.__dataclass_fields__})

    async def missing(
        self, manifest: WeightsManifest, tensors: Sequence[CachedTensor]
    ) -> list[CachedTensor]:
        request = fill_request(manifest, tensors, Source("stream"))
        lacking = set((await self.call("missing", request))["missing"])
        return [t for t in tensors if t.fnv in lacking]

    async def listing(self) -> CacheListing:
        answer = await self.call("list", {})
        return CacheListing(
            answer["dir"],
            tuple(ModelEntry(**m) for m in answer["models"]),
            answer["other_files"],
            answer["other_bytes"],
            answer["free"],
        )

    async def verify(self, manifests: Sequence[WeightsManifest] = ()) -> VerifyResult:
        known = {t.fnv: t.sha256 for m in manifests for t in m.tensors}
        answer = await self.call("verify", {"known": known})
        return VerifyResult(answer["checked"], answer["bytes"], tuple(answer["bad"]),
                            answer["unknown"])  # fmt: skip

    async def clear(self, model: str | None = None) -> tuple[int, int]:
        """Remove `model`'s files (or all); return (files, bytes) removed."""
        answer = await self.call("clear", {"model": model} if model else {})
        return int(answer["removed"]), int(answer["bytes"])


async def open_caches(
    inv: Inventory,
    names: Sequence[str] | None,
    prompt: HostKeyPrompt | None = None,
    timeout: float | None = None,
) -> tuple[list[HostCache], list[tuple[str, str]]]:
    """The caches of the cluster file's hosts (all, or `names`), each over a new connection
    (close them with `close_caches`), and the hosts that could not be used, with why."""
    hosts = [inv.host(n) for n in names] if names else list(inv.hosts)
    unused = [(h.name, "it runs its own rpc-server, whose cache Quorum does not manage")
              for h in hosts if h.rpc_server]  # fmt: skip
    hosts = [h for h in hosts if not h.rpc_server]
    answers = await asyncio.gather(
        *(connect(inv, h, prompt, timeout) for h in hosts), return_exceptions=True
    )
    caches = []
    for host, answer in zip(hosts, answers, strict=True):
        if isinstance(answer, HostFailure):
            unused.append((host.name, f"{answer.state}: {answer.reason}"))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            caches.append(HostCache(host.name, answer))
    return caches, unused


async def close_caches(caches: Sequence[HostCache]) -> None:
    for cache in caches:
        if cache.session is not None:
            await cache.session.close()


def remote_command(command: str) -> str:
    """The sh command running hostcache on a host, with the runtime's copy of this package."""
    return (
        f'{CACHE_SH}; PYTHONPATH="$c/{RUNTIME_NAME}/app" exec python3 -m '
        f'quorum_tui.cluster.hostcache {shlex.quote(command)} --cache "$c/rpc-cache"'
    )


def fill_request(
    manifest: WeightsManifest,
    tensors: Sequence[CachedTensor],
    source: Source,
    limit_bytes: int = 0,
) -> dict[str, Any]:
    used = {t.file for t in tensors}
    return {
        "model": manifest.model,
        "limit_bytes": limit_bytes,
        "source": source.to_json(),
        "files": [asdict(f) for f in manifest.files if f.name in used],
        "tensors": [asdict(t) for t in tensors],
    }


async def read_tensors(folder: Path, tensors: Sequence[CachedTensor]) -> AsyncIterator[bytes]:
    """The tensors' bytes from this machine's model files in `folder`, in order."""
    for tensor in tensors:
        with (folder / tensor.file).open("rb") as f:
            f.seek(tensor.offset)
            left = tensor.size
            while left:
                block = await asyncio.to_thread(f.read, min(hostcache.CHUNK, left))
                if not block:
                    raise QuorumError(f"{folder / tensor.file} ended inside {tensor.name}")
                left -= len(block)
                yield block
