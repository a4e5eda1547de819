"""The worker runtime shipped to hosts: this machine's llama.cpp build, packed once.

A worker needs ggml, the RPC backend and the CPU backend modules, nothing else of llama.cpp.
They are packed from the build `make` made (portable: one CPU module per CPU generation, and
the host proves which one it runs) into a tar.gz with a manifest of each file's sha256, kept
beside the build. A host whose platform fits (same OS and architecture, a glibc no older than
this machine's) gets this archive over its SSH connection instead of compiling llama.cpp:
no compiler, no package index, no internet needed there. Other hosts compile (a GPU host, for
CUDA; another platform), and Quorum says why.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from quorum_tui.cluster.hostprobe import PROTOCOL_TEXT, HostFacts
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.errors import QuorumError

LLAMA_VERSION = "0.3.36"
RUNTIME_LIBS = ("libgomp.so.1",)
"""System libraries the CPU modules need that a bare host may lack (OpenMP): shipped along."""
_PACKING = threading.Lock()


@dataclass(frozen=True)
class LlamaArchive:
    """The packed runtime: `id` names its content, `sha256` the archive file."""

    path: Path
    id: str
    sha256: str
    arch: str
    glibc: str

    def unfit(self, facts: HostFacts) -> str | None:
        """Why this archive cannot serve the host (None: it can)."""
        if facts.gpus:
            names = ", ".join(g.name for g in facts.gpus)
            return (
                f"it has a GPU ({names}): its worker is compiled there with CUDA "
                "(the shipped runtime is for CPUs)"
            )
        if facts.os != "Linux":
            return f"it runs {facts.os}, and the shipped runtime is for Linux"
        if facts.arch != self.arch:
            arch = facts.arch or "of an unknown architecture"
            return f"it is {arch}, and the shipped runtime is for {self.arch}"
        if not facts.glibc:
            return "its C library is not glibc (or does not say its version)"
        if _version(facts.glibc) < _version(self.glibc):
            return f"its glibc {facts.glibc} is older than this machine's {self.glibc}"
        return None


def glibc_version() -> str:
    """This machine's glibc version ("2.36"), or "" where it has another C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return ""
    return text.removeprefix("glibc ").strip()


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def llama_archive(build: LlamaBuild | None = None) -> LlamaArchive:
    """The archive of `build` (the installed one by default), packed on first use."""
    build = build or LlamaBuild.installed()
    return _archive(build, build.fingerprint())


@functools.cache
def _archive(build: LlamaBuild, fingerprint: str) -> LlamaArchive:
    with _PACKING:
        return _pack(build, fingerprint)


def _pack(build: LlamaBuild, fingerprint: str) -> LlamaArchive:
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    path = build.state_dir() / f"worker-runtime-{digest}.tar.gz"
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if path.exists():
            return LlamaArchive(path, meta["id"], meta["sha256"], meta["arch"], meta["glibc"])
    except (OSError, ValueError, KeyError):
        pass
    files = _runtime_files(build)
    hashes = {name: hashlib.sha256(source.read_bytes()).hexdigest() for name, source in files}
    content = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {
        "id": content,
        "llama_cpp": LLAMA_VERSION,
        "protocol": PROTOCOL_TEXT,
        "arch": platform.machine(),
        "glibc": glibc_version(),
        "files": hashes,
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6, dereference=True) as tar:
        for name, source in files:
            tar.add(source, arcname=name, recursive=False)
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    meta = {"id": content, "sha256": sha, "arch": manifest["arch"], "glibc": manifest["glibc"]}
    meta_path.write_text(json.dumps(meta))
    return LlamaArchive(path, content, sha, str(manifest["arch"]), str(manifest["glibc"]))


def _runtime_files(build: LlamaBuild) -> list[tuple[str, Path]]:
    """(name in the archive, file here): ggml, its backends, and the system libraries they
    need that hosts may lack."""
    files = [
        (f"lib/{build.libggml_base.name}", build.libggml_base),
        (f"lib/{build.libggml.name}", build.libggml),
        (f"bin/{build.rpc_backend.name}", build.rpc_backend),
    ]
    if not build.rpc_backend.exists():
        raise QuorumError(f"the llama.cpp build in {build.root} has no RPC backend: run `make`")
    variants = list(build.cpu_variants().values())
    files += [(f"bin/{p.name}", p) for p in variants]
    for name, path in _needed_system_libs(variants[0]).items():
        files.append((f"lib/{name}", path))
    return files


def _needed_system_libs(module: Path) -> dict[str, Path]:
    """RUNTIME_LIBS that `module` links, where this machine has them (ldd)."""
    try:
        out = subprocess.run(["ldd", str(module)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.stdout.splitlines():
        name, _, rest = line.strip().partition(" => ")
        target = rest.split(" (")[0].strip()
        if name in RUNTIME_LIBS and target.startswith("/"):
            found[name] = Path(target).resolve()
    return found
