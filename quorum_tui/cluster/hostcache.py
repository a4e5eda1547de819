"""A host's worker tensor cache, managed on the host: `python -m quorum_tui.cluster.hostcache`.

The cache directory is the one the worker hands to llama.cpp (`rpc-cache`): each file holds one
weight tensor's bytes and is named by their FNV-1a (engine.weights). Quorum fills it from the
host's own copy of the model, from a URL with range requests, or from bytes the coordinator
streams down stdin; each tensor is written under a temporary name, its sha256 checked against
the coordinator's manifest, and only then renamed into place, so a file llama.cpp finds is
whole and right. An index (`quorum-cache.json`) records each file's sha256 and which models
use it, for `verify` and for evicting least-recently-used models when the cache outgrows its
limit.

Runs on worker hosts with the standard library only. Commands read one JSON request from the
first line of stdin (a `fill` from the `stream` source then reads, after it, the bytes of the
tensors its `send` list names, in that order) and print JSON lines: `progress` events and a
last `done` or `error`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

INDEX = "quorum-cache.json"
LOCK = ".quorum-cache.lock"
CHUNK = 8 << 20
RESERVE = 256 << 20
"""Disk space a fill leaves free."""
NAME = re.compile(r"^[0-9a-f]{16}$")
URL_TIMEOUT = 15.0
"""Seconds a URL source may stay silent (a host that cannot reach it gives up soon)."""
Emit = Callable[[dict[str, Any]], None]


class CacheError(Exception):
    """A fill or check that cannot go on; the message says why and what to do."""


# ----- the index


def _load_index(cache: str) -> dict[str, Any]:
    try:
        with open(os.path.join(cache, INDEX)) as f:
            data = json.load(f)
        if isinstance(data.get("files"), dict) and isinstance(data.get("models"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"files": {}, "models": {}}


def _save_index(cache: str, index: dict[str, Any]) -> None:
    path = os.path.join(cache, INDEX)
    with open(path + ".tmp", "w") as f:
        json.dump(index, f)
    os.replace(path + ".tmp", path)


@contextlib.contextmanager
def _locked(cache: str) -> Iterator[dict[str, Any]]:
    """The index, under the cache's lock, saved when the block ends."""
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, LOCK), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = _load_index(cache)
        try:
            yield index
        except BaseException:
            try:
                _save_index(cache, index)
            except OSError:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(cache, INDEX + ".tmp"))
            raise
        try:
            _save_index(cache, index)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cache, INDEX + ".tmp"))
            raise CacheError(f"cannot write the cache's index in {cache}: {exc.strerror}") from None


def _entries(cache: str) -> dict[str, int]:
    """Cache files present, by name, with their sizes."""
    found = {}
    for entry in os.scandir(cache):
        if NAME.match(entry.name) and entry.is_file():
            found[entry.name] = entry.stat().st_size
    return found


# ----- sources of a tensor's bytes


class _Source:
    label = ""

    def check_file(self, file: dict[str, Any]) -> None:
        """Raise CacheError unless this source's copy of `file` is the coordinator's."""

    def read(self, tensor: dict[str, Any]) -> Iterator[bytes]:
        raise NotImplementedError


class _DirSource(_Source):
    """Copies of the model's files in a directory on this host."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.expanduser(directory)
        self.label = self.directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def check_file(self, file: dict[str, Any]) -> None:
        path = self.path(file["name"])
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise CacheError(f"no copy of {file['name']} here ({path}: {exc.strerror})") from None
        if size != file["size"]:
            raise CacheError(
                f"{path} has {size} bytes and the coordinator's {file['name']} "
                f"{file['size']}: it is another file or an unfinished copy"
            )
        with open(path, "rb") as f:
            head = f.read(file["header_bytes"])
        if hashlib.sha256(head).hexdigest() != file["header_sha256"]:
            raise CacheError(f"{path}'s GGUF header differs from the coordinator's model")

    def read(self, tensor: dict[str, Any]) -> Iterator[bytes]:
        path = self.path(tensor["file"])
        with open(path, "rb") as f:
            f.seek(tensor["offset"])
            yield from _blocks(f, tensor["size"], f"{path} ended inside {tensor['name']}")


class _UrlSource(_Source):
    """The model's files at a URL (`{file}` in it is each file's name), read by range."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.label = url.split("?")[0].replace("{file}", "<file>")

    def _get(self, name: str, first: int, size: int) -> Iterator[bytes]:
        url = self.url.replace("{file}", urllib.parse.quote(name))
        headers = {**self.headers, "Range": f"bytes={first}-{first + size - 1}"}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as reply:
                if reply.status != 206:
                    raise CacheError(f"{self.label} does not answer range requests")
                yield from _blocks(reply, size, f"{self.label} ended its reply early")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CacheError(f"cannot read {self.label}: {reason}") from None

    def check_file(self, file: dict[str, Any]) -> None:
        head = b"".join(self._get(file["name"], 0, file["header_bytes"]))
        if hashlib.sha256(head).hexdigest() != file["header_sha256"]:
            raise CacheError(f"{self.label}'s GGUF header differs from the coordinator's model")

    def read(self, tensor: dict[str, Any]) -> Iterator[bytes]:
        return self._get(tensor["file"], tensor["offset"], tensor["size"])


class _StreamSource(_Source):
    """The tensors' bytes, in the request's order, from the coordinator down stdin."""

    label = "the coordinator"

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read(self, tensor: dict[str, Any]) -> Iterator[bytes]:
        short = f"the coordinator's stream ended inside {tensor['name']}"
        return _blocks(self.stream, tensor["size"], short)


def _blocks(reader: Any, size: int, short: str) -> Iterator[bytes]:
    """`size` bytes from `reader` in chunks; CacheError(`short`) if it ends first."""
    left = size
    while left:
        block = reader.read(min(CHUNK, left))
        if not block:
            raise CacheError(short)
        left -= len(block)
        yield block


def _source(spec: dict[str, Any], stream: BinaryIO) -> _Source:
    kind = spec.get("kind")
    if kind == "dir":
        return _DirSource(spec["dir"])
    if kind == "url":
        return _UrlSource(spec["url"], dict(spec.get("headers") or {}))
    if kind == "stream":
        return _StreamSource(stream)
    if kind == "none":
        raise CacheError("nothing to read the lacking tensors from")
    raise CacheError(f"unknown source {kind!r}")


# ----- commands


def missing(cache: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The requested tensors the cache lacks (absent, or of the wrong size)."""
    present = _entries(cache) if os.path.isdir(cache) else {}
    return [t for t in request["tensors"] if present.get(t["fnv"]) != t["size"]]


def fill(cache: str, request: dict[str, Any], stream: BinaryIO, emit: Emit) -> dict[str, Any]:
    """Bring the request's tensors into the cache; return what was done."""
    model = request["model"]
    limit = int(request.get("limit_bytes") or 0)
    tensors = request["tensors"]
    with _locked(cache) as index:
        _adopt(index, model, tensors)
        _prune(cache, tensors)
        if "send" in request:
            order = {name: i for i, name in enumerate(request["send"])}
            lacking = sorted(
                (t for t in tensors if t["fnv"] in order), key=lambda t: order[t["fnv"]]
            )
        else:
            lacking = missing(cache, request)
        need = sum(t["size"] for t in lacking)
        result = {"model": model, "tensors": len(tensors), "present": len(tensors) - len(lacking),
                  "present_bytes": sum(t["size"] for t in tensors) - need,
                  "written": 0, "bytes": 0, "evicted": 0, "source": ""}  # fmt: skip
        if not lacking or request["source"].get("kind") == "none":
            return result
        result["evicted"] = _make_room(
            cache, index, model, need, limit, {t["fnv"] for t in tensors}
        )
        source = _source(request["source"], stream)
        result["source"] = source.label
        for file in request.get("files", []):
            if any(t["file"] == file["name"] for t in lacking):
                source.check_file(file)
        started = time.monotonic()
        for tensor in lacking:
            _write(cache, tensor, source)
            index["files"][tensor["fnv"]] = {"sha256": tensor["sha256"], "size": tensor["size"]}
            result["written"] += 1
            result["bytes"] += tensor["size"]
            emit({"event": "progress", "done": result["bytes"], "total": need,
                  "seconds": time.monotonic() - started})  # fmt: skip
        return result


def _prune(cache: str, tensors: list[dict[str, Any]]) -> None:
    """Remove files of these tensors whose size is not the tensor's: cut short (llama.cpp
    writes its own cache files in place), they would load as wrong weights."""
    present = _entries(cache)
    for t in tensors:
        size = present.get(t["fnv"])
        if size is not None and size != t["size"]:
            os.remove(os.path.join(cache, t["fnv"]))


def _adopt(index: dict[str, Any], model: str, tensors: list[dict[str, Any]]) -> None:
    """Record that `model` uses these tensors, now."""
    entry = index["models"].setdefault(model, {"files": [], "used": 0.0})
    known = set(entry["files"])
    entry["files"] += [t["fnv"] for t in tensors if t["fnv"] not in known]
    entry["used"] = time.time()
    for t in tensors:
        index["files"].setdefault(t["fnv"], {"sha256": t["sha256"], "size": t["size"]})


def _make_room(
    cache: str, index: dict[str, Any], model: str, need: int, limit: int, keep: set[str]
) -> int:
    """Evict least-recently-used models' files (never `keep`) until `need` more bytes fit
    under `limit` and on the disk; raise CacheError, evicting nothing, when they cannot."""
    present = _entries(cache)
    free = shutil.disk_usage(cache).free
    others = sorted(
        ((entry.get("used", 0.0), name) for name, entry in index["models"].items() if name != model)
    )
    unknown = [n for n in present if n not in index["files"] and n not in keep]
    groups = [[n] for n in sorted(unknown, key=lambda n: _mtime(cache, n))]
    groups += [index["models"][name]["files"] for _, name in others]
    held, chosen, freed = sum(present.values()), [], 0

    def fits() -> bool:
        disk = free + freed - RESERVE >= need
        return disk and (not limit or held - freed + need <= limit)

    for names in groups:
        if fits():
            break
        for name in names:
            if name not in keep and name in present and name not in chosen:
                chosen.append(name)
                freed += present[name]
    if not fits():
        own = sum(size for name, size in present.items() if name in keep)
        why = (
            f"the cache limit is {_size(limit)} and {model}'s tensors alone need "
            f"{_size(own + need)}"
            if limit and own + need > limit
            else f"its disk has {_size(free)} free, the fill needs {_size(need)} and leaves "
            f"{_size(RESERVE)}, and evicting other models would free only {_size(freed)}"
        )
        raise CacheError(
            f"no room in the tensor cache {cache}: {why}. Free disk space there or raise the "
            "host's cache_gib in the cluster file; nothing was written or evicted"
        )
    for name in chosen:
        os.remove(os.path.join(cache, name))
        index["files"].pop(name, None)
    gone = set(chosen)
    for entry in index["models"].values():
        entry["files"] = [n for n in entry["files"] if n not in gone]
    index["models"] = {
        name: entry for name, entry in index["models"].items() if entry["files"] or name == model
    }
    return len(chosen)


def _mtime(cache: str, name: str) -> float:
    try:
        return os.path.getmtime(os.path.join(cache, name))
    except OSError:
        return 0.0


def _write(cache: str, tensor: dict[str, Any], source: _Source) -> None:
    """One tensor: bytes to a temporary file, sha256 checked, fsynced, renamed into place."""
    final = os.path.join(cache, tensor["fnv"])
    tmp = os.path.join(cache, f".{tensor['fnv']}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for block in source.read(tensor):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != tensor["sha256"]:
            raise CacheError(
                f"tensor {tensor['name']} from {source.label} differs from the coordinator's "
                "model: that copy is another version or damaged, and is not used"
            )
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CacheError(
                f"the disk of {cache} filled up while writing {tensor['name']}: free space "
                "there or lower the host's cache_gib; the partial file was removed"
            ) from None
        raise CacheError(f"cannot write {tmp}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def verify(cache: str, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Hash every cache file; remove those whose bytes are not the tensor they are named
    for. `request["known"]` maps names to sha256 for files the index does not know."""
    known = dict(request.get("known") or {})
    bad: list[str] = []
    checked = unknown = 0
    total = 0
    with _locked(cache) as index:
        entries = _entries(cache)
        for name, size in sorted(entries.items()):
            want = index["files"].get(name) or (
                {"sha256": known[name], "size": None} if name in known else None
            )
            if want is None:
                unknown += 1
                continue
            digest = hashlib.sha256()
            with open(os.path.join(cache, name), "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
            checked += 1
            total += size
            wrong_size = want.get("size") is not None and want["size"] != size
            if wrong_size or digest.hexdigest() != want["sha256"]:
                os.remove(os.path.join(cache, name))
                index["files"].pop(name, None)
                bad.append(name)
            emit({"event": "progress", "done": checked, "total": len(entries)})
        for entry in index["models"].values():
            entry["files"] = [n for n in entry["files"] if n not in bad]
    return {"checked": checked, "bytes": total, "bad": bad, "unknown": unknown}


def listing(cache: str) -> dict[str, Any]:
    """Each model's files and bytes present, the files no model claims, and the disk."""
    if not os.path.isdir(cache):
        parent = cache
        while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        free = shutil.disk_usage(parent).free
        return {"models": [], "other_files": 0, "other_bytes": 0, "free": free, "dir": cache}
    index = _load_index(cache)
    present = _entries(cache)
    claimed: set[str] = set()
    models = []
    for name, entry in sorted(index["models"].items(), key=lambda kv: -kv[1].get("used", 0)):
        files = [n for n in entry["files"] if n in present]
        claimed.update(files)
        size = sum(present[n] for n in files)
        models.append(
            {"model": name, "files": len(files), "bytes": size, "used": entry.get("used", 0)}
        )
    other = [n for n in present if n not in claimed]
    return {
        "dir": cache,
        "models": models,
        "other_files": len(other),
        "other_bytes": sum(present[n] for n in other),
        "free": shutil.disk_usage(cache).free,
    }


def clear(cache: str, request: dict[str, Any]) -> dict[str, Any]:
    """Remove one model's files (those no other model uses), or every cache file."""
    model = request.get("model")
    removed = 0
    freed = 0
    if not os.path.isdir(cache):
        return {"removed": 0, "bytes": 0}
    with _locked(cache) as index:
        present = _entries(cache)
        if model:
            if model not in index["models"]:
                return {"removed": 0, "bytes": 0}
            others = {n for m, e in index["models"].items() if m != model for n in e["files"]}
            names = [n for n in index["models"].pop(model)["files"] if n not in others]
        else:
            names = list(present)
            index["models"].clear()
        for name in names:
            if name in present:
                os.remove(os.path.join(cache, name))
                freed += present[name]
                removed += 1
            index["files"].pop(name, None)
    return {"removed": removed, "bytes": freed}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run(
    command: str, cache: str, request: dict[str, Any], stream: BinaryIO, emit: Emit
) -> dict[str, Any]:
    """One command's answer (what `done` carries)."""
    if command == "fill":
        return fill(cache, request, stream, emit)
    if command == "missing":
        return {"missing": [t["fnv"] for t in missing(cache, request)]}
    if command == "verify":
        return verify(cache, request, emit)
    if command == "list":
        return listing(cache)
    return clear(cache, request)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quorum-hostcache")
    p.add_argument("command", choices=("fill", "missing", "verify", "list", "clear"))
    p.add_argument("--cache", required=True)
    args = p.parse_args(argv)
    stdin = sys.stdin.buffer
    line = stdin.readline() if args.command != "list" else b"{}"
    out = sys.stdout

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    try:
        result = run(args.command, args.cache, json.loads(line or b"{}"), stdin, emit)
    except CacheError as exc:
        emit({"event": "error", "message": str(exc)})
        return 1
    except (ValueError, KeyError, OSError) as exc:
        emit({"event": "error", "message": f"the {args.command} request failed: {exc!r}"})
        return 1
    emit({"event": "done", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
