"""The local model cache: plain GGUF files under cache_dir()/models.

    models/hf/OWNER/REPO/<path in the repository>   Hub files, split parts side by side
    models/hf/OWNER/REPO/.quorum-repo.json          commit, sizes and sha256 of what was pulled
    models/url/<12 hex of the URL>/<file name>      plain URL downloads (+ .quorum-url.json)
    models/registry/<name>/<file name>              a registry model (+ .quorum-registry.json)

A file is only ever renamed into place after its size and checksum were checked; anything
still arriving is a `.part` file beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.gguf_info import inspect_model, split_part, split_parts
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged
from quorum_tui.models.download import PART_SUFFIX
from quorum_tui.models.hub import auth_headers, file_url, group_key, quant_tag

log = logging.getLogger(__name__)

REPO_MANIFEST = ".quorum-repo.json"
URL_MANIFEST = ".quorum-url.json"
REGISTRY_MANIFEST = ".quorum-registry.json"


def models_dir() -> Path:
    return paths.cache_dir() / "models"


def repo_dir(repo: str) -> Path:
    owner, name = repo.split("/", 1)
    return models_dir() / "hf" / owner / name


def url_dir(url: str) -> Path:
    return models_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:12]


def registry_dir(name: str) -> Path:
    return models_dir() / "registry" / name


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def repo_manifest(repo: str) -> dict[str, Any]:
    return read_json(repo_dir(repo) / REPO_MANIFEST)


def record_repo_files(
    repo: str,
    commit: str,
    files: dict[str, dict[str, Any]],
    spec: str | None = None,
    chosen: list[str] | None = None,
) -> None:
    """Remember the checked files of `repo`, and which files `spec` resolved to."""
    manifest = repo_manifest(repo)
    manifest["repo"] = repo
    manifest["commit"] = commit
    manifest.setdefault("files", {}).update(files)
    if spec and chosen:
        manifest.setdefault("specs", {})[spec] = chosen
    write_json(repo_dir(repo) / REPO_MANIFEST, manifest)


def cached_hub_files(repo: str, spec: str) -> list[Path] | None:
    """The files `spec` resolved to when it was last pulled, if they are all still here."""
    chosen = repo_manifest(repo).get("specs", {}).get(spec)
    if not chosen:
        return None
    found = [repo_dir(repo) / name for name in chosen]
    return found if all(p.is_file() for p in found) else None


def source_url(path: Path) -> tuple[str, dict[str, str]] | None:
    """Where the cached model at `path` came from, as a URL with `{file}` for each of its
    files' names, and the headers to send (the Hub's token); None for a file from elsewhere."""
    path = path.resolve()
    hub = models_dir().resolve() / "hf"
    if path.is_relative_to(hub):
        owner, name, *rest = path.relative_to(hub).parts
        repo = f"{owner}/{name}"
        commit = str(repo_manifest(repo).get("commit") or "")
        if not commit or not rest:
            return None
        folder = "/".join(rest[:-1])
        url = file_url(repo, f"{folder}/@FILE@" if folder else "@FILE@", commit)
        return url.replace("%40FILE%40", "{file}"), auth_headers()
    manifest = read_json(path.parent / URL_MANIFEST)
    url = str(manifest.get("url") or "")
    if url and path.parent.resolve().is_relative_to(models_dir().resolve() / "url"):
        return url, {}
    return None


@dataclass(frozen=True)
class CachedModel:
    """A model in the cache: one .gguf file or all parts of a split one."""

    name: str
    path: Path
    parts: tuple[Path, ...]
    size: int
    source: str
    layers: int | None = None
    quant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "parts": [str(p) for p in self.parts],
            "size": self.size,
            "source": self.source,
            "layers": self.layers,
            "quant": self.quant,
        }


def cached_models(describe: bool = True) -> list[CachedModel]:
    """Every complete model in the cache, split parts grouped; with layers and quant if asked."""
    root = models_dir()
    found: list[CachedModel] = []
    hf = root / "hf"
    for manifest in sorted(hf.glob(f"*/*/{REPO_MANIFEST}")) if hf.is_dir() else []:
        base = manifest.parent
        repo = f"{base.parent.name}/{base.name}"
        for first, parts in _groups(base):
            rel = first.relative_to(base).as_posix()
            tag = quant_tag(group_key(rel))
            name = f"{repo}:{tag}" if tag else f"{repo}/{rel}"
            found.append(_model(name, first, parts, f"hf:{repo}", describe))
    urls = root / "url"
    for manifest in sorted(urls.glob(f"*/{URL_MANIFEST}")) if urls.is_dir() else []:
        url = str(read_json(manifest).get("url", ""))
        for first, parts in _groups(manifest.parent):
            found.append(_model(url or first.name, first, parts, "url", describe))
    registry = root / "registry"
    for manifest in sorted(registry.glob(f"*/{REGISTRY_MANIFEST}")) if registry.is_dir() else []:
        data = read_json(manifest)
        path = manifest.parent / str(data.get("file", ""))
        if path.is_file():
            name = str(data.get("name") or manifest.parent.name)
            found.append(_model(name, path, (path,), "registry", describe))
    return _unique_names(found)


def _groups(base: Path) -> list[tuple[Path, tuple[Path, ...]]]:
    files = sorted(p for p in base.rglob("*.gguf") if p.is_file())
    out: list[tuple[Path, tuple[Path, ...]]] = []
    for path in files:
        split = split_part(path.name)
        if split is None:
            out.append((path, (path,)))
        elif split[1] == 1:
            parts = tuple(split_parts(path))
            if all(p.is_file() for p in parts):
                out.append((path, parts))
    return out


def _model(
    name: str, first: Path, parts: tuple[Path, ...], source: str, describe: bool
) -> CachedModel:
    size = sum(p.stat().st_size for p in parts)
    layers = quant = None
    if describe:
        with logged(log, f"reading {first}", QuorumError, OSError):
            info = inspect_model(first)
            layers, quant = info.n_layers, info.quant
    return CachedModel(name, first, parts, size, source, layers, quant)


def _unique_names(models: list[CachedModel]) -> list[CachedModel]:
    """Two models with one quant tag in a repository are named by their files instead."""
    seen: dict[str, int] = {}
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
    out = []
    for m in models:
        if seen[m.name] > 1 and m.source.startswith("hf:"):
            base = repo_dir(m.source[3:])
            m = CachedModel(
                f"{m.source[3:]}/{m.path.relative_to(base).as_posix()}",
                m.path,
                m.parts,
                m.size,
                m.source,
                m.layers,
                m.quant,
            )
        out.append(m)
    return out


def find_cached(name: str) -> CachedModel:
    """The cached model called `name` (as `quorum models` lists it, or its path)."""
    models = cached_models(describe=False)
    for m in models:
        if name in (m.name, str(m.path)) or (
            m.source.startswith("hf:") and name == f"{m.source[3:]}/{_rel(m)}"
        ):
            return m
    lowered = [m for m in models if m.name.lower() == name.lower()]
    if len(lowered) == 1:
        return lowered[0]
    names = ", ".join(m.name for m in models) or "none"
    raise QuorumError(f"no cached model {name!r}; the cache holds: {names}")


def _rel(m: CachedModel) -> str:
    return _rel_to(m.source[3:], m.path)


def remove(model: CachedModel) -> int:
    """Delete a cached model's files (and leftovers of them); return the bytes freed."""
    freed = 0
    for part in model.parts:
        for path in (part, part.with_name(part.name + PART_SUFFIX)):
            if path.exists():
                freed += path.stat().st_size
                path.unlink()
        for suffix in (".json", ".lock"):
            part.with_name(part.name + PART_SUFFIX + suffix).unlink(missing_ok=True)
    if model.source.startswith("hf:"):
        repo = model.source[3:]
        manifest = repo_manifest(repo)
        removed = {_rel_to(repo, p) for p in model.parts}
        for name in removed:
            manifest.get("files", {}).pop(name, None)
        specs = manifest.get("specs", {})
        for spec in [s for s, names in specs.items() if set(names) & removed]:
            del specs[spec]
        if manifest.get("files"):
            write_json(repo_dir(repo) / REPO_MANIFEST, manifest)
        else:
            shutil.rmtree(repo_dir(repo), ignore_errors=True)
    else:
        base = model.path.parent
        if not any(base.glob("*.gguf")):
            shutil.rmtree(base, ignore_errors=True)
    return freed


def _rel_to(repo: str, path: Path) -> str:
    return path.relative_to(repo_dir(repo)).as_posix()
