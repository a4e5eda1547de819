"""The llama.cpp build Quorum runs: its libraries, backends and llama-server, wherever it lies.

`make` builds llama.cpp once, portable: ggml's backends are loaded at run time
(`GGML_BACKEND_DL`), and the CPU backend comes in one library per CPU generation
(`GGML_CPU_ALL_VARIANTS`: libggml-cpu-x64.so ... libggml-cpu-sapphirerapids.so). Left to
itself, ggml would load the variant whose CPUID bits score best; Quorum loads the one its CPU
check proved (engine.cpucheck) instead.

A build has two directories: `lib_dir` with libggml-base and libggml (the copies that
llama-cpp-python's own bindings load, so a process using both shares one ggml), and
`bin_dir` with llama-server and the backend modules. The build installed in this Python has
them in site-packages (`llama_cpp/lib` and `bin`); a runtime shipped to a worker host has
them as `lib/` and `bin/` under its root. Standard library only: worker hosts use it too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from quorum_tui.errors import QuorumError

BUILD_ENV = "QUORUM_LLAMA_BUILD"
"""A llama.cpp build's root (with lib/ and bin/) to use instead of the installed one."""
CPU_PREFIX = "libggml-cpu"
STATE_DIR = "quorum-state"
VARIANT = re.compile(r"^libggml-cpu(?:-(?P<name>[\w.]+))?\.so$")
BACKEND = re.compile(r"^libggml-(?P<name>[\w.]+)\.so$")


@dataclass(frozen=True)
class LlamaBuild:
    lib_dir: Path
    bin_dir: Path

    @classmethod
    def at(cls, root: Path) -> LlamaBuild:
        """A build unpacked under `root` (a shipped runtime, or a site-packages dir)."""
        lib = root / "llama_cpp" / "lib"
        return cls(lib if lib.is_dir() else root / "lib", root / "bin")

    @classmethod
    def installed(cls) -> LlamaBuild:
        """The build in this Python (llama-cpp-python's wheel), or QUORUM_LLAMA_BUILD's."""
        override = os.environ.get(BUILD_ENV)
        if override:
            return cls.at(Path(override)).checked()
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.origin is None:
            raise QuorumError(
                "llama-cpp-python is not installed in this Python: `make` installs it into .venv"
            )
        return cls.at(Path(spec.origin).parent.parent).checked()

    def checked(self) -> LlamaBuild:
        """Self, once the libraries and at least one CPU backend are there."""
        missing = [p for p in (self.libggml_base, self.libggml) if not p.exists()]
        if missing:
            raise QuorumError(
                f"the llama.cpp build lacks {', '.join(map(str, missing))}: run `make` again"
            )
        if not self.cpu_variants():
            raise QuorumError(
                f"the llama.cpp build in {self.bin_dir.parent} has no CPU backend modules "
                "(libggml-cpu-*.so): it was not built with GGML_BACKEND_DL; run `make` again, "
                "which rebuilds it portable"
            )
        return self

    @property
    def root(self) -> Path:
        return self.bin_dir.parent

    @property
    def libggml_base(self) -> Path:
        return _soname(self.lib_dir, "libggml-base")

    @property
    def libggml(self) -> Path:
        return _soname(self.lib_dir, "libggml")

    @property
    def rpc_backend(self) -> Path:
        return self.bin_dir / "libggml-rpc.so"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    def cpu_variants(self) -> dict[str, Path]:
        """Each CPU backend module by variant name ("native" for a build without variants)."""
        found = {}
        for path in sorted(self.bin_dir.glob(f"{CPU_PREFIX}*.so")):
            match = VARIANT.match(path.name)
            if match:
                found[match["name"] or "native"] = path
        return found

    def other_backends(self) -> list[Path]:
        """Backend modules besides the CPU's (RPC, and GPUs where the build has them)."""
        return [
            p
            for p in sorted(self.bin_dir.glob("libggml-*.so"))
            if BACKEND.match(p.name) and not VARIANT.match(p.name)
        ]

    def fingerprint(self) -> str:
        """Names, sizes and times of the build's files that what Quorum derives from it (the
        CPU verdict, llama-server's folder) depends on."""
        parts = []
        for path in [*self.cpu_variants().values(), self.libggml_base, self.server]:
            if path.exists():
                stat = path.stat()
                parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return ";".join(parts)

    def state_dir(self) -> Path:
        """Where Quorum keeps what it derives from this build: beside it when writable, else
        under Quorum's cache dir."""
        folder = self.root / STATE_DIR
        try:
            folder.mkdir(exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
        from quorum_tui import paths

        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return paths.ensure(paths.cache_dir() / STATE_DIR / digest)

    def server_with(self, cpu: Path) -> Path:
        """llama-server in a folder whose only CPU backend is `cpu`.

        llama-server loads the backends beside its own file (and in its working directory),
        the CPU variant with the best CPUID score first; in this folder there is one. The
        binary is hard-linked (a symbolic link would resolve to the original's folder), else
        copied.
        """
        if not self.server.exists():
            raise QuorumError(
                f"llama-server is missing at {self.server}: it is built with llama-cpp-python "
                "(run `make` again; it rebuilds a wheel that lacks it)"
            )
        digest = hashlib.sha256(self.fingerprint().encode()).hexdigest()[:12]
        folder = self.state_dir() / f"server-{digest}-{cpu.stem.removeprefix('lib')}"
        server = folder / "bin" / "llama-server"
        if server.exists():
            return server
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        binary = self.server.resolve()
        try:
            os.link(binary, tmp / "bin" / "llama-server")
        except OSError:
            shutil.copy2(binary, tmp / "bin" / "llama-server")
        for module in [cpu, *self.other_backends()]:
            (tmp / "bin" / module.name).symlink_to(module.resolve())
        (tmp / "lib").symlink_to((self.root / "lib").resolve())
        try:
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not server.exists():
                raise
        return server


def _soname(folder: Path, stem: str) -> Path:
    """`stem.so.0` where the build has it (wheels copy each soname), else `stem.so`."""
    versioned = folder / f"{stem}.so.0"
    return versioned if versioned.exists() else folder / f"{stem}.so"
