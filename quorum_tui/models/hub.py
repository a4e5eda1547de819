"""The Hugging Face Hub: a repository's GGUF files with their sizes and LFS checksums.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import; Quorum reads them on
every call so that a changed environment (a test, a TUI setting) takes effect.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from quorum_tui.engine.gguf_info import split_part
from quorum_tui.errors import QuorumError
from quorum_tui.models.spec import HUB_HOSTS, HubSpec

DEFAULT_TAG = "Q4_K_M"
"""llama.cpp's choice when `owner/repo` names no quant and the repository has several."""

_QUANT = re.compile(
    r"(?:^|[-._/])(?P<tag>(?:UD-)?(?:I?Q\d+(?:_[A-Z0-9]+)*|[BM]?F(?:P)?\d+\w*|TQ\d_\d))$",
    re.IGNORECASE,
)
_TRUE = {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    """HF_ENDPOINT, read now, without a trailing slash."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_hosts() -> frozenset[str]:
    host = (urlsplit(endpoint()).hostname or "").lower()
    return HUB_HOSTS | {host}


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def auth_headers() -> dict[str, str]:
    """The headers huggingface_hub sends: user agent and HF_TOKEN (or the saved token)."""
    from huggingface_hub.utils import build_hf_headers

    from quorum_tui import __version__

    return dict(build_hf_headers(library_name="quorum", library_version=__version__))


def file_url(repo: str, filename: str, revision: str) -> str:
    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None = None
    """The LFS sha256 (None for a file kept in git, which has blob_id, a git sha1)."""
    blob_id: str | None = None


@dataclass(frozen=True)
class RepoListing:
    repo: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool = False


@dataclass(frozen=True)
class ModelGroup:
    """One model in a repository: a single .gguf file or all parts of a split one."""

    key: str
    files: tuple[RemoteFile, ...]

    @property
    def tag(self) -> str | None:
        return quant_tag(self.key)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def label(self) -> str:
        parts = f" ({len(self.files)} parts)" if len(self.files) > 1 else ""
        return f"{self.key}{parts}"


def group_key(name: str) -> str:
    part = split_part(name)
    return part[0] if part else name[: -len(".gguf")]


def quant_tag(key: str) -> str | None:
    """The quant tag a file name ends with: 'model-Q4_K_M' -> 'Q4_K_M'."""
    m = _QUANT.search(key.rsplit("/", 1)[-1])
    return m["tag"] if m else None


def model_groups(files: list[RemoteFile]) -> list[ModelGroup]:
    """GGUF models of a repository, split parts grouped, projectors (mmproj-*) left out."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        base = f.name.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or base.startswith("mmproj"):
            continue
        groups.setdefault(group_key(f.name), []).append(f)
    return [
        ModelGroup(k, tuple(sorted(v, key=lambda f: f.name))) for k, v in sorted(groups.items())
    ]


def _matches(key: str, tag: str) -> bool:
    k, t = key.lower(), tag.lower()
    return k.endswith(t) and (len(k) == len(t) or k[-len(t) - 1] in "-._/")


def select(spec: HubSpec, listing: RepoListing) -> ModelGroup:
    """The files `spec` names in `listing`: all parts of a split model."""
    groups = model_groups(list(listing.files))
    if spec.filename:
        wanted = next((f for f in listing.files if f.name == spec.filename), None)
        if wanted is None:
            raise QuorumError(
                f"{listing.repo} has no file {spec.filename}; it has: {_inventory(groups)}"
            )
        key = group_key(wanted.name)
        group = next((g for g in groups if g.key == key), None)
        return group or ModelGroup(key, (wanted,))
    if not groups:
        raise QuorumError(f"{listing.repo} has no GGUF model files")
    if spec.tag is None:
        if len(groups) == 1:
            return groups[0]
        default = [g for g in groups if _matches(g.key, DEFAULT_TAG)]
        if len(default) == 1:
            return default[0]
        raise QuorumError(
            f"{listing.repo} has several models: add a quant tag, {listing.repo}:TAG; "
            f"it has {_inventory(groups)}"
        )
    found = [g for g in groups if _matches(g.key, spec.tag)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise QuorumError(f"{listing.repo} has no {spec.tag} model; it has {_inventory(groups)}")
    raise QuorumError(
        f"{spec.tag} matches several models in {listing.repo}: "
        f"{', '.join(g.label() for g in found)}; name the file instead "
        f"({listing.repo}/{found[0].files[0].name})"
    )


def _inventory(groups: list[ModelGroup]) -> str:
    if not groups:
        return "no GGUF files"
    return ", ".join(f"{g.tag or g.key} ({g.label()})" for g in groups)


def listing(spec: HubSpec) -> RepoListing:
    """The repository's files with sizes and LFS sha256, from the Hub API."""
    if offline():
        raise QuorumError(
            f"{spec.repo} is not in the cache and HF_HUB_OFFLINE is set: unset it to download"
        )
    from huggingface_hub import HfApi

    from quorum_tui import __version__

    api = HfApi(endpoint=endpoint(), library_name="quorum", library_version=__version__)
    try:
        info = api.model_info(spec.repo, revision=spec.revision, files_metadata=True)
    except Exception as exc:
        raise hub_error(exc, spec.repo, spec.revision) from None
    files = tuple(
        RemoteFile(
            s.rfilename,
            int(s.lfs.size if s.lfs else s.size or 0),
            s.lfs.sha256 if s.lfs else None,
            s.blob_id,
        )
        for s in info.siblings or []
    )
    return RepoListing(spec.repo, info.sha or spec.revision, files, bool(info.gated))


def hub_error(exc: Exception, repo: str, revision: str = "main") -> QuorumError:
    """A huggingface_hub or HTTP error, reworded for the user."""
    from huggingface_hub import errors

    status = _status(exc)
    if isinstance(exc, errors.GatedRepoError) or (status in (401, 403) and _gated(exc)):
        return QuorumError(
            f"{repo} is a gated repository: accept its terms on the Hub, then set HF_TOKEN "
            "to a token of an account that has access"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return QuorumError(f"{repo} has no revision {revision!r}: check the branch, tag or commit")
    if isinstance(exc, errors.RepositoryNotFoundError) or status in (401, 404):
        token = (
            " (if it is private or gated, set HF_TOKEN)" if not os.environ.get("HF_TOKEN") else ""
        )
        return QuorumError(f"no repository {repo} on {endpoint()}{token}: check the name")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return QuorumError(f"{repo} is not cached and HF_HUB_OFFLINE is set: unset it to download")
    if status is not None:
        return QuorumError(f"the Hub answered {status} for {repo}: {_first_line(exc)}")
    return QuorumError(f"cannot reach {endpoint()} for {repo}: {_first_line(exc)}")


def status_error(status: int, error_code: str, repo: str, name: str) -> QuorumError:
    """An HTTP error status on a file of `repo`, reworded for the user."""
    if error_code == "GatedRepo" or (status == 403 and os.environ.get("HF_TOKEN")):
        return QuorumError(
            f"{repo} is a gated repository: accept its terms on the Hub, then set HF_TOKEN "
            "to a token of an account that has access"
        )
    if status in (401, 403):
        return QuorumError(f"{repo} refused access to {name} ({status}): set HF_TOKEN")
    if status == 404:
        return QuorumError(f"{repo} has no file {name} (404): check the name")
    return QuorumError(f"the Hub answered {status} for {repo}/{name}")


def _status(exc: Exception) -> int | None:
    response: Any = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if code is not None else None


def _gated(exc: Exception) -> bool:
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return str(headers.get("X-Error-Code", "")) == "GatedRepo"


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
