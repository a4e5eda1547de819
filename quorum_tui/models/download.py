"""Stream one file over HTTP into place: progress events, range resume, checksums.

Bytes go to `NAME.part` next to the destination; only a complete file whose size and checksum
check out is renamed to NAME. An interruption (a dropped connection, Ctrl-C, a cancel) leaves
the `.part` file, and the next fetch asks the server for the rest with an HTTP Range request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import httpx

from quorum_tui.errors import QuorumError
from quorum_tui.models import diskspace
from quorum_tui.units import human_bytes

CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.1
RATE_WINDOW_S = 3.0
RETRIES = 3
"""Extra attempts after a dropped connection, each resuming where the last one stopped."""
PART_SUFFIX = ".part"

Phase = Literal["hash", "download", "verify", "done"]


@dataclass(frozen=True)
class Progress:
    """How far one file has come. `hash` re-reads a resumed `.part`; `verify` checks it."""

    name: str
    index: int
    count: int
    phase: Phase
    done: int
    total: int | None
    rate: float = 0.0
    eta: float | None = None
    resumed_from: int = 0

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


ProgressCallback = Callable[[Progress], None]


class DownloadCancelled(QuorumError):
    """The caller's cancel event was set; the `.part` file stays for a later resume."""


@dataclass(frozen=True)
class Target:
    """A file to fetch and what it must turn out to be."""

    url: str
    dest: Path
    name: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None
    """A git blob id: the checksum the Hub gives for files not stored in LFS."""


StatusError = Callable[[httpx.Response], QuorumError]


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX + ".json")


class _Hasher:
    """sha256 (and a git blob sha1) computed on a thread beside the network reads."""

    def __init__(self, git_size: int | None) -> None:
        self.git_size = git_size
        self._start()

    def _start(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1(usedforsecurity=False) if self.git_size is not None else None
        if self.sha1 is not None:
            self.sha1.update(f"blob {self.git_size}\0".encode())
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(
            target=self._run, args=(self._queue,), daemon=True, name="quorum-hash"
        )
        self._thread.start()

    def _run(self, batches: queue.Queue[list[bytes] | None]) -> None:
        while (batch := batches.get()) is not None:
            block = batch[0] if len(batch) == 1 else b"".join(batch)
            self.sha256.update(block)
            if self.sha1 is not None:
                self.sha1.update(block)

    def reset(self) -> None:
        """Forget everything hashed so far."""
        self._queue.put(None)
        self._thread.join()
        self._start()

    def update_many(self, chunks: list[bytes]) -> None:
        self._queue.put(chunks)

    def finish(self) -> tuple[str, str | None]:
        self._queue.put(None)
        self._thread.join()
        return self.sha256.hexdigest(), self.sha1.hexdigest() if self.sha1 else None

    def abandon(self) -> None:
        self._queue.put(None)


class _Meter:
    """Rate over the last few seconds and the ETA it implies."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        t0, d0 = self.samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0


class Downloader:
    """Fetches Targets with one HTTP client, reporting Progress to a callback."""

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        retries: int | None = None,
        status_error: StatusError | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.headers = dict(headers or {})
        self.on_progress = on_progress or (lambda p: None)
        self.cancel = cancel
        self.retries = RETRIES if retries is None else retries
        self.status_error = status_error or _status_error
        self.client = client or httpx.Client(
            follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0)
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, target: Target, index: int = 1, count: int = 1) -> Path:
        """Download `target` into place and return its path; resume any `.part` left before."""
        target.dest.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(target.dest, target.name):
            return self._fetch(target, index, count)

    def _fetch(self, target: Target, index: int, count: int) -> Path:
        dest = target.dest
        part = part_path(dest)
        meta = self._load_meta(target)
        have = part.stat().st_size if part.exists() else 0
        if not meta or (target.size is not None and have > target.size):
            have = 0
        base = Progress(target.name, index, count, "download", have, target.size, resumed_from=have)
        hasher = _Hasher(target.size if target.git_sha1 else None)
        try:
            if have:
                self._hash_existing(part, have, hasher, base)
            else:
                part.write_bytes(b"")
            total = self._stream(target, part, have, hasher, base)
        except BaseException:
            hasher.abandon()
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
                _meta_path(dest).unlink(missing_ok=True)
            raise
        sha256, sha1 = hasher.finish()
        self.on_progress(replace(base, phase="verify", done=total, total=total))
        self._verify(target, part, total, sha256, sha1)
        os.replace(part, dest)
        _meta_path(dest).unlink(missing_ok=True)
        self.on_progress(replace(base, phase="done", done=total, total=total))
        return dest

    def _load_meta(self, target: Target) -> dict[str, Any] | None:
        """What the `.part` was fetched from; None when it is unusable for a resume."""
        path = _meta_path(target.dest)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("url") != target.url:
            return None
        if target.size is not None and data.get("size") not in (None, target.size):
            return None
        return data

    def _save_meta(self, target: Target, response: httpx.Response, total: int | None) -> None:
        data = {
            "url": target.url,
            "size": total,
            "etag": response.headers.get("etag"),
            "last_modified": response.headers.get("last-modified"),
        }
        _meta_path(target.dest).write_text(json.dumps(data))

    def _hash_existing(self, part: Path, have: int, hasher: _Hasher, base: Progress) -> None:
        done = 0
        with part.open("rb") as f:
            while done < have and (chunk := f.read(min(CHUNK * 8, have - done))):
                hasher.update_many([chunk])
                done += len(chunk)
                self._check_cancel(base, done)
        self.on_progress(replace(base, phase="hash", done=done))

    def _check_cancel(self, base: Progress, done: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                f"download of {base.name} cancelled at {human_bytes(done)}; pull it again to resume"
            )

    def _stream(
        self, target: Target, part: Path, have: int, hasher: _Hasher, base: Progress
    ) -> int:
        """Append the rest of the file to `part`, retrying dropped connections; return its size."""
        attempt = 0
        total = target.size
        meter = _Meter()
        while True:
            headers = dict(self.headers)
            if have:
                headers["Range"] = f"bytes={have}-"
                validator = None if target.sha256 or target.git_sha1 else self._validator(target)
                if validator:
                    headers["If-Range"] = validator
            try:
                with self.client.stream("GET", target.url, headers=headers) as response:
                    if response.status_code == 416 and total is not None and have == total:
                        return have
                    if response.status_code >= 400:
                        response.read()
                        raise self.status_error(response)
                    if have and response.status_code != 206:
                        hasher.reset()
                        part.write_bytes(b"")
                        have = 0
                    elif have and _range_start(response) != have:
                        raise QuorumError(
                            f"{target.url} answered a resume with the wrong range; "
                            f"delete {part} and pull again"
                        )
                    total = total or _total_size(response, have)
                    if total is not None:
                        diskspace.ensure_room(part.parent, total - have, f"{target.name}")
                    self._save_meta(target, response, total)
                    have = self._receive(response, part, have, total, hasher, base, meter)
            except httpx.TransportError as exc:
                have = part.stat().st_size
                attempt += 1
                if attempt > self.retries:
                    got = human_bytes(have)
                    raise QuorumError(
                        f"download of {target.name} stopped at {got} ({_reason(exc)}); "
                        "run the same command again to resume"
                    ) from None
                time.sleep(min(0.2 * 2**attempt, 5.0))
                continue
            if total is None or have >= total:
                return have
            attempt += 1
            if attempt > self.retries:
                raise QuorumError(
                    f"the server closed {target.name} at {human_bytes(have)} of "
                    f"{human_bytes(total)}; run the same command again to resume"
                )

    def _validator(self, target: Target) -> str | None:
        meta = self._load_meta(target) or {}
        etag = meta.get("etag")
        if isinstance(etag, str) and not etag.startswith("W/"):
            return etag
        modified = meta.get("last_modified")
        return modified if isinstance(modified, str) else None

    def _receive(
        self,
        response: httpx.Response,
        part: Path,
        have: int,
        total: int | None,
        hasher: _Hasher,
        base: Progress,
        meter: _Meter,
    ) -> int:
        """Append the body to `part`; the hasher gets it in CHUNK-sized batches."""
        last = 0.0
        batch: list[bytes] = []
        batched = 0
        with part.open("ab") as f:
            try:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    have += len(chunk)
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= CHUNK:
                        hasher.update_many(batch)
                        batch, batched = [], 0
                    now = time.monotonic()
                    if now - last >= PROGRESS_EVERY_S:
                        last = now
                        self._check_cancel(base, have)
                        rate = meter.add(now, have)
                        eta = (total - have) / rate if rate > 0 and total else None
                        self.on_progress(replace(base, done=have, total=total, rate=rate, eta=eta))
            finally:
                if batch:
                    hasher.update_many(batch)
        return have

    def _verify(
        self, target: Target, part: Path, total: int, sha256: str, sha1: str | None
    ) -> None:
        problem = None
        if target.size is not None and total != target.size:
            problem = f"it has {total} bytes where {target.size} were expected"
        elif target.sha256 and sha256 != target.sha256.lower():
            problem = f"its sha256 is {sha256}, not {target.sha256}"
        elif target.git_sha1 and sha1 is not None and sha1 != target.git_sha1.lower():
            problem = f"its git sha1 is {sha1}, not {target.git_sha1}"
        if problem:
            part.unlink(missing_ok=True)
            _meta_path(target.dest).unlink(missing_ok=True)
            raise QuorumError(
                f"{target.name} is corrupt: {problem}. The bad file was removed; pull again"
            )


@contextlib.contextmanager
def exclusive(dest: Path, name: str) -> Iterator[None]:
    """Hold a lock on `NAME.part.lock` so two processes never append to one `.part` file."""
    lock = dest.with_name(dest.name + PART_SUFFIX + ".lock")
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QuorumError(
                f"another Quorum process is downloading {name}: wait for it to finish"
            ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    with contextlib.suppress(ValueError, IndexError):
        return int(value.split(" ", 1)[1].split("-", 1)[0])
    return None


def _total_size(response: httpx.Response, have: int) -> int | None:
    value = response.headers.get("content-range", "")
    if "/" in value and not value.endswith("/*"):
        with contextlib.suppress(ValueError):
            return int(value.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    if length and "content-encoding" not in response.headers:
        with contextlib.suppress(ValueError):
            return have + int(length)
    return None


def _status_error(response: httpx.Response) -> QuorumError:
    url = str(response.request.url)
    if response.status_code in (401, 403):
        return QuorumError(f"{url} refused access ({response.status_code}): it needs credentials")
    if response.status_code == 404:
        return QuorumError(f"{url} does not exist (404): check the address")
    return QuorumError(f"{url} answered {response.status_code} {response.reason_phrase}")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
