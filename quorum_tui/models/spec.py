"""What a user can type for a model, parsed: a local path, a Hub repository or file, a URL.

The forms follow llama.cpp's: `owner/repo:QUANT`, `owner/repo` (its only GGUF model, or
Q4_K_M), `owner/repo/path/file.gguf`, `https://...`, a Hub web address
(`https://huggingface.co/owner/repo/resolve/main/file.gguf` or `.../blob/...`), or a local path.
`@REVISION` after the repository picks a branch, tag or commit: `owner/repo@v1:Q8_0`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from quorum_tui.errors import QuorumError

DEFAULT_REVISION = "main"
HUB_HOSTS = frozenset({"huggingface.co", "hf.co"})

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^:/@]+))?(?::(?P<tag>[^:/@]+))?$")
_REPO_FILE = re.compile(
    rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^:/@]+))?/(?P<file>[^:@]+\.gguf)$", re.IGNORECASE
)
_WEB_PATH = re.compile(
    rf"^/(?P<repo>{_NAME}/{_NAME})/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<file>.+)$"
)


@dataclass(frozen=True)
class LocalSpec:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class HubSpec:
    """A model on the Hub: a quant tag (or none: pick) or an exact file."""

    repo: str
    tag: str | None = None
    filename: str | None = None
    revision: str = DEFAULT_REVISION

    def __str__(self) -> str:
        rev = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        if self.filename:
            return f"{self.repo}{rev}/{self.filename}"
        return f"{self.repo}{rev}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class UrlSpec:
    url: str

    @property
    def filename(self) -> str:
        name = unquote(urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1])
        return name or "model.gguf"

    def __str__(self) -> str:
        return self.url


ModelSpec = LocalSpec | HubSpec | UrlSpec


def parse_spec(text: str, hub_hosts: frozenset[str] = HUB_HOSTS) -> ModelSpec:
    """Classify what the user typed. An existing local path always wins."""
    text = text.strip()
    if not text:
        raise QuorumError("no model given: name a .gguf path, owner/repo:QUANT or a URL")
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        web = _WEB_PATH.match(parts.path)
        if web and (parts.hostname or "").lower() in hub_hosts:
            return HubSpec(web["repo"], filename=unquote(web["file"]), revision=unquote(web["rev"]))
        if not parts.hostname:
            raise QuorumError(f"{text!r} is not a valid URL: it has no host")
        return UrlSpec(text)
    if text.startswith("hf://"):
        text = text[len("hf://") :]
    path = Path(text).expanduser()
    if path.exists() or text.startswith(("/", "./", "../", "~")):
        return LocalSpec(path)
    if m := _REPO_FILE.match(text):
        return HubSpec(m["repo"], filename=m["file"], revision=m["rev"] or DEFAULT_REVISION)
    if m := _REPO.match(text):
        return HubSpec(m["repo"], tag=m["tag"], revision=m["rev"] or DEFAULT_REVISION)
    return LocalSpec(path)
