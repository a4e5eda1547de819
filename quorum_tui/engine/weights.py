"""A model's weights as llama.cpp's worker tensor cache names them, and which a stage holds.

llama.cpp's RPC client offers every weight tensor over `HASH_THRESHOLD` to a worker by the
64-bit FNV-1a of its bytes (ggml-rpc.cpp); a worker with `cache_dir/<hash as %016x>` loads
that file and nothing more is sent. A manifest lists those tensors of a model (file, offset,
size, FNV-1a and sha256), so a host can fill its cache from its own copy of the model,
checked tensor by tensor, and the coordinator can tell what each worker still lacks. It is
computed once per model file (C hashing over a memory map) and kept under the cache dir.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.gguf_info import split_parts
from quorum_tui.engine.ggufheader import read_header
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.errors import QuorumError

HASH_THRESHOLD = 10 * 1024 * 1024
"""ggml-rpc.cpp's HASH_THRESHOLD: weight tensors larger than this are offered by hash."""
MANIFEST_VERSION = 1
_BLOCK = re.compile(r"^blk\.(\d+)\.")
INPUT_TENSOR = "token_embd.weight"
OUTPUT_TENSOR = "output.weight"


def fnv1a64(data: Any, seed: int = 0xCBF29CE484222325) -> int:
    """llama.cpp's fnv_hash of a bytes-like object (the C extension built with Quorum)."""
    from quorum_tui.engine._fnv import fnv1a64 as native

    return native(data, seed)


def cache_name(value: int) -> str:
    """The cache file's name for a hash, as ggml-rpc.cpp prints it (%016 PRIx64)."""
    return f"{value:016x}"


@dataclass(frozen=True)
class CachedTensor:
    """One tensor the worker cache holds: where its bytes are and what they hash to."""

    file: str
    name: str
    offset: int
    size: int
    fnv: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """One file of the model (a split model has several): its size and its header's hash."""

    name: str
    size: int
    header_bytes: int
    header_sha256: str


@dataclass(frozen=True)
class WeightsManifest:
    model: str
    files: tuple[ModelFile, ...]
    tensors: tuple[CachedTensor, ...]

    @property
    def cached_bytes(self) -> int:
        return sum(t.size for t in self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "model": self.model,
            "files": [asdict(f) for f in self.files],
            "tensors": [asdict(t) for t in self.tensors],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightsManifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r}")
        return cls(
            str(data["model"]),
            tuple(ModelFile(**f) for f in data["files"]),
            tuple(CachedTensor(**t) for t in data["tensors"]),
        )

    def for_layers(self, layers: Iterable[int], output: bool) -> tuple[CachedTensor, ...]:
        """The cached tensors of `layers`, and of the output layer when `output`."""
        wanted = set(layers)
        tied = not any(t.name == OUTPUT_TENSOR for t in self.tensors)
        return tuple(t for t in self.tensors if _held(t.name, wanted, output, tied))

    def for_stage(self, plan: LayerPlan, stage: int) -> tuple[CachedTensor, ...]:
        """The cached tensors llama.cpp places on `stage` (1: the first worker) of `plan`."""
        *owners, output = plan.assignment()
        layers = [layer for layer, owner in enumerate(owners) if owner == stage]
        return self.for_layers(layers, output == stage)


def _held(name: str, layers: set[int], output: bool, tied: bool) -> bool:
    block = _BLOCK.match(name)
    if block:
        return int(block.group(1)) in layers
    if name == INPUT_TENSOR:
        return output and tied
    return output


def _kept_dir() -> Path:
    return paths.cache_dir() / "manifests"


def known_manifests() -> list[WeightsManifest]:
    """Every manifest computed on this machine (for checking caches that hold their tensors)."""
    found = []
    for kept in sorted(_kept_dir().glob("*.json")) if _kept_dir().is_dir() else []:
        try:
            found.append(WeightsManifest.from_json(json.loads(kept.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _kept(files: list[Path]) -> Path:
    stats = [f.stat() for f in files]
    key = "|".join(
        f"{f.resolve()}:{s.st_size}:{s.st_mtime_ns}" for f, s in zip(files, stats, strict=True)
    )
    return _kept_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def known_manifest(path: Path) -> WeightsManifest | None:
    """The manifest of the model at `path` if it was computed before (nothing is hashed)."""
    try:
        return WeightsManifest.from_json(json.loads(_kept(split_parts(path)).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def manifest(path: Path) -> WeightsManifest:
    """The manifest of the model at `path` (its first part, for a split model), computed on
    first use and kept under the cache dir for as long as the files are unchanged."""
    files = split_parts(path)
    kept = _kept(files)
    try:
        return WeightsManifest.from_json(json.loads(kept.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    made = compute_manifest(files)
    paths.ensure(kept.parent)
    tmp = kept.with_suffix(".tmp")
    tmp.write_text(json.dumps(made.to_json()))
    tmp.replace(kept)
    return made


def compute_manifest(files: list[Path]) -> WeightsManifest:
    """Hash every tensor over the threshold in `files` (FNV-1a and sha256 side by side)."""
    model_files: list[ModelFile] = []
    tensors: list[CachedTensor] = []
    with ThreadPoolExecutor(2) as pool:
        for path in files:
            header = read_header(path)
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    head = hashlib.sha256(view[: header.data_start]).hexdigest()
                    model_files.append(ModelFile(path.name, len(m), header.data_start, head))
                    for row in header.tensors:
                        if row.n_bytes <= HASH_THRESHOLD:
                            continue
                        end = row.offset + row.n_bytes
                        if end > len(m):
                            raise QuorumError(
                                f"{path} ends inside tensor {row.name}: the file is truncated"
                            )
                        data = view[row.offset : end]
                        fnv = pool.submit(fnv1a64, data)
                        sha = hashlib.sha256(data).hexdigest()
                        tensors.append(
                            CachedTensor(
                                path.name,
                                row.name,
                                row.offset,
                                row.n_bytes,
                                cache_name(fnv.result()),
                                sha,
                            )
                        )
                        data.release()
                finally:
                    view.release()
    return WeightsManifest(files[0].name, tuple(model_files), tuple(tensors))
