"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub and Quorum call.

- GET /api/models/OWNER/REPO[/revision/REV][?blobs=true]: repository info with siblings
  (size, blobId, lfs.sha256) as huggingface_hub's HfApi.model_info() reads them;
- GET|HEAD /OWNER/REPO/resolve/REV/PATH: the file, with ETag, X-Repo-Commit and range
  requests; LFS files redirect to /cdn/... as the real Hub redirects to its CDN;
- GET /plain/NAME: a plain file with range support, for URL downloads.

Faults are set per file: drop the connection after N bytes (once), serve other bytes than
the metadata describes, refuse ranges. Every request and the body bytes sent are recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

GOOD_TOKEN = "hf_good_token"
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<path>.+)$")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1("/".join(sorted(self.files)).encode()).hexdigest()
            self.commit = digest

    def sibling(self, name: str) -> dict[str, object]:
        data = self.files[name]
        blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        row: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": blob}
        if name.endswith(".gguf"):
            row["size"] = 134
            row["lfs"] = {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "pointerSize": 134,
            }
        return row


@dataclass
class FakeHub:
    """The server's state; tests change it between requests."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    plain: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    """File name -> bytes of body to send before dropping the connection (once)."""
    corrupt: set[str] = field(default_factory=set)
    no_ranges: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)
    """Files sent in 8 KiB pieces, 20 ms apart."""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)
    """File name -> body bytes sent for it, over all requests."""
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(self, repo: str, files: dict[str, bytes], gated: bool = False) -> FakeRepo:
        self.repos[repo] = FakeRepo(files, gated)
        return self.repos[repo]

    def add_dir(self, repo: str, directory: Path, gated: bool = False) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
        return self.add_repo(repo, files, gated)

    def paths_requested(self, method: str = "GET") -> list[str]:
        return [p for m, p, _ in self.requests if m == method]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if m := _API.match(path):
            return self._api(m["repo"], m["rev"])
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["rev"], m["path"], body)
        if m := _CDN.match(path):
            repo = self.hub.repos[m["repo"]]
            return self._file(m["path"], repo.files[m["path"]], body, repo.commit)
        if path.startswith("/plain/"):
            name = path[len("/plain/") :]
            if name not in self.hub.plain:
                return self._error(404, "EntryNotFound", "no such file")
            return self._file(name, self.hub.plain[name], body, None)
        self._error(404, None, "unknown endpoint")

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}"

    def _api(self, name: str, rev: str | None) -> None:
        repo = self.hub.repos.get(name)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if rev not in (None, "main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        info = {
            "_id": "0" * 24,
            "id": name,
            "modelId": name,
            "author": name.split("/")[0],
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"],
            "library_name": "gguf",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [repo.sibling(n) for n in sorted(repo.files)],
        }
        payload = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _resolve(self, name: str, rev: str, path: str, body: bool) -> None:
        repo = self.hub.repos.get(name)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated and not self._authorized():
            return self._error(
                401,
                "GatedRepo",
                f"Access to model {name} is restricted. You must be authenticated.",
            )
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if path not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found")
        if path.endswith(".gguf"):
            sibling = repo.sibling(path)
            lfs = sibling["lfs"]
            assert isinstance(lfs, dict)
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}/{path}")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("X-Linked-Etag", f'"{lfs["sha256"]}"')
            self.send_header("X-Linked-Size", str(lfs["size"]))
            self.send_header("ETag", f'"{sibling["blobId"]}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._file(path, repo.files[path], body, repo.commit)

    def _file(self, name: str, data: bytes, body: bool, commit: str | None) -> None:
        if name in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, end = 0, len(data) - 1
        ranged = self.headers.get("Range") if name not in self.hub.no_ranges else None
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        if_range = self.headers.get("If-Range")
        if ranged and if_range and if_range != etag:
            ranged = None
        if ranged:
            m = re.match(r"bytes=(\d+)-(\d*)$", ranged)
            if not m:
                return self._error(400, None, "bad range")
            start = int(m[1])
            end = min(int(m[2]), len(data) - 1) if m[2] else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = data[start : end + 1]
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with self.hub.lock:
            limit = self.hub.drop_after.pop(name, None)
        if limit is not None and limit < len(chunk):
            self._send(name, chunk[:limit])
            self.close_connection = True
            return
        self._send(name, chunk)

    def _send(self, name: str, chunk: bytes) -> None:
        view = memoryview(chunk)
        step = 8192 if name in self.hub.slow else 1 << 20
        for offset in range(0, len(view), step):
            piece = view[offset : offset + step]
            if name in self.hub.slow:
                time.sleep(0.02)
            try:
                self.wfile.write(piece)
            except OSError:
                return
            with self.hub.lock:
                self.hub.sent[name] += len(piece)

    def _error(self, status: int, code: str | None, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


def start_hub(hub: FakeHub) -> _Server:
    """Serve `hub` on 127.0.0.1 and a free port, on a daemon thread; set hub.url."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hub = hub
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(
        target=server.serve_forever, args=(0.05,), daemon=True, name="fake-hub"
    ).start()
    return server
