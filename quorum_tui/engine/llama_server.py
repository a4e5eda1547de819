"""llama.cpp's own llama-server as the coordinator: where the binary is and how it is started.

The binary is built with the llama-cpp-python wheel from the same vendored llama.cpp as the
workers' libraries (see the Makefile), so the RPC protocol and ggml's op table match exactly.
This module is pure apart from finding the binary (and proving, once, which CPU backend goes
beside it): a plan and options become an argv.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quorum_tui.engine.cpucheck import CpuVerdict, cpu_verdict
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.engine.plan import LayerPlan, LlamaParams
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.speculation import Speculation
from quorum_tui.errors import QuorumError

BINARY_ENV = "QUORUM_LLAMA_SERVER"
"""Path of a llama-server to use instead of the one installed with llama-cpp-python."""
LOG_VERBOSITY = 5
"""llama.cpp logs where each layer went at debug level: the realized assignment needs it."""


@dataclass(frozen=True)
class ServerOptions:
    """How the coordinator serves: the settings every caller shares (engine.settings)."""

    host: str = "127.0.0.1"
    port: int = 8080
    ctx: int = 2048
    """Tokens of context per slot."""
    slots: int = 4
    """Requests decoded at once; more wait in llama-server's queue."""
    threads: int = 1
    alias: str = ""
    api_key: str | None = None
    repack: bool = True
    """Let the CPU backend repack quantized weights (off: numerics match RPC workers exactly)."""
    speculation: Speculation = field(default_factory=Speculation)
    extra: tuple[str, ...] = ()
    """llama-server's own options from the user, last so that they win (engine.server_args)."""

    @classmethod
    def from_settings(
        cls,
        settings: EngineSettings,
        threads: int,
        model: Path,
        draft: Path | None = None,
        api_key: str | None = None,
        port: int = 8080,
    ) -> ServerOptions:
        """The options `settings` make for serving `model` (named by --alias, else its file)."""
        server = settings.server
        return cls(
            port=port,
            ctx=settings.ctx,
            slots=settings.slots,
            threads=threads,
            alias=server.alias or model.name,
            api_key=api_key,
            repack=settings.repack,
            speculation=Speculation(settings.spec, draft),
            extra=server.argv,
        )


@dataclass(frozen=True)
class ServerBinary:
    """The llama-server to run and the CPU kernels beside it (None: QUORUM_LLAMA_SERVER's,
    which loads what it loads)."""

    path: Path
    cpu: CpuVerdict | None


def server_binary() -> ServerBinary:
    """The llama-server built with llama-cpp-python, beside the CPU backend this machine
    proved it runs (the first call on a machine runs the check: blocking, under a second)."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise QuorumError(f"{BINARY_ENV}={path} is not an executable file")
        return ServerBinary(path, None)
    build = LlamaBuild.installed()
    verdict = cpu_verdict(build)
    return ServerBinary(build.server_with(Path(verdict.path)), verdict)


def device_names(device_counts: Sequence[int]) -> list[str]:
    """llama.cpp's names of the RPC devices, numbered in registration order across workers."""
    return [f"RPC{i}" for i in range(sum(device_counts))]


def server_argv(
    model: Path | str,
    plan: LayerPlan,
    options: ServerOptions,
    device_counts: Sequence[int] | None = None,
    params: LlamaParams | None = None,
    binary: Path | None = None,
) -> list[str]:
    """The llama-server command that serves `model` split as `plan`.

    `params` defaults to the plan's own llama.cpp parameters; `device_counts` gives each
    worker's device count (one each when not given); `binary` defaults to server_binary()'s.
    """
    counts = list(device_counts) if device_counts else [1] * len(plan.workers)
    params = params or plan.to_llama_params(counts if device_counts else None)
    argv = [
        str(binary or server_binary().path),
        "--model", str(Path(model).resolve()),
        "--host", options.host,
        "--port", str(options.port),
        "--ctx-size", str(options.ctx * options.slots),
        "--parallel", str(options.slots),
        "--threads", str(options.threads),
        "--threads-batch", str(options.threads),
        "--n-gpu-layers", str(params.n_gpu_layers),
        "--split-mode", "layer",
        "--flash-attn", "on",
        "--fit", "off",
        "--jinja",
        "--metrics",
        "--no-webui",
        "--log-verbosity", str(LOG_VERBOSITY),
        "--log-colors", "off",
    ]  # fmt: skip
    if params.devices:
        argv += ["--rpc", ",".join(params.devices), "--device", ",".join(device_names(counts))]
        if any(params.tensor_split):
            argv += ["--tensor-split", ",".join(f"{x:g}" for x in params.tensor_split)]
    if options.alias:
        argv += ["--alias", options.alias]
    if options.api_key:
        argv += ["--api-key", options.api_key]
    if not options.repack:
        argv.append("--no-repack")
    return [*argv, *options.speculation.argv(), *options.extra]
