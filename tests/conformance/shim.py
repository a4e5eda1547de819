"""Stand-in for llama-server that llama.cpp's server test suite starts (LLAMA_SERVER_BIN_PATH).

QUORUM_CONFORMANCE_MODE selects what it execs:

- ``llama-server``: the real llama-server (QUORUM_CONFORMANCE_SERVER) on the local fixture, the
  baseline;
- ``quorum``: ``quorum serve`` (QUORUM_CONFORMANCE_QUORUM) on the fixture, sharded over the
  workers in QUORUM_CONFORMANCE_WORKERS (``host:port,host:port``) by QUORUM_CONFORMANCE_SPLIT.

The suite asks for its models by Hugging Face repository; only stories260K exists offline
(QUORUM_CONFORMANCE_MODEL), any other model makes both modes fail alike. The suite's router
preset (no model) starts llama-server's router; Quorum has none and serves the fixture instead,
which keeps the router preset's tests of other behaviours (CORS) meaningful.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

MODEL_FLAGS = {"-m", "--model", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file"}
DROPPED_FLAGS = {"-ngl", "--gpu-layers", "--n-gpu-layers"}
DROPPED_SWITCHES = {"--offline"}
CTX_FLAGS = {"-c", "--ctx-size"}
PARALLEL_FLAGS = {"-np", "--parallel"}
THREAD_FLAGS = {"-t", "--threads"}
OWNED_FLAGS = {"--host": "--host", "--port": "--port", "--api-key": "--api-key"}
LLAMA_SERVER_AUTO_SLOTS = 4


class ShimError(Exception):
    """The suite asked for something this offline run cannot provide."""


@dataclass
class ServerArgs:
    """llama-server's command line, split into what Quorum owns and what it passes through."""

    model: list[str] = field(default_factory=list)
    ctx: int | None = None
    parallel: int | None = None
    threads: str | None = None
    owned: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)


def parse(argv: Sequence[str]) -> ServerArgs:
    """Sort llama-server's flags (every one the suite gives takes at most one value)."""
    out = ServerArgs()
    i = 0
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if flag in MODEL_FLAGS:
            out.model.append(value)
        elif flag in DROPPED_FLAGS:
            pass
        elif flag in DROPPED_SWITCHES:
            i += 1
            continue
        elif flag in CTX_FLAGS:
            out.ctx = int(value)
        elif flag in PARALLEL_FLAGS:
            out.parallel = int(value)
        elif flag in THREAD_FLAGS:
            out.threads = value
        elif flag in OWNED_FLAGS:
            out.owned += [OWNED_FLAGS[flag], value]
        else:
            out.rest.append(flag)
            i += 1
            continue
        i += 2
    return out


def is_fixture(names: Sequence[str]) -> bool:
    """Whether the suite's model (repository and file) is stories260K itself."""
    joined = " ".join(names).lower()
    return "stories260k" in joined and "infill" not in joined


def model_path(args: ServerArgs) -> str:
    """The local model for the suite's --model/--hf-repo/--hf-file (the fixture without one)."""
    if args.model and not is_fixture(args.model):
        raise ShimError(f"model {' '.join(args.model)} is not available offline")
    return os.environ["QUORUM_CONFORMANCE_MODEL"]


def original_without_model(argv: Sequence[str]) -> list[str]:
    """llama-server's own arguments less the model flags."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in MODEL_FLAGS:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def llama_server_command(argv: Sequence[str]) -> list[str]:
    """The baseline: the real llama-server on the fixture, or as a router without a model."""
    server = os.environ["QUORUM_CONFORMANCE_SERVER"]
    args = parse(argv)
    if not args.model:
        return [server, *argv]
    return [server, *original_without_model(argv), "--model", model_path(args)]


def slot_args(args: ServerArgs) -> list[str]:
    """llama-server's total --ctx-size and --parallel as Quorum's per-slot --ctx and --slots."""
    if args.parallel is None and args.ctx is None:
        return []
    if args.parallel is None:
        return ["--ctx", str(args.ctx), "--slots", str(LLAMA_SERVER_AUTO_SLOTS)]
    slots = ["--slots", str(args.parallel)]
    if args.ctx is None:
        return slots
    return ["--ctx", str(args.ctx // max(args.parallel, 1)), *slots]


def quorum_command(argv: Sequence[str]) -> list[str]:
    """``quorum serve`` on the fixture over the session's workers."""
    args = parse(argv)
    model = model_path(args)
    workers = [w for w in os.environ["QUORUM_CONFORMANCE_WORKERS"].split(",") if w]
    cmd = [os.environ["QUORUM_CONFORMANCE_QUORUM"], "serve", model]
    for worker in workers:
        cmd += ["--worker", worker]
    cmd += ["--split", os.environ["QUORUM_CONFORMANCE_SPLIT"], *args.owned, *slot_args(args)]
    if args.threads is not None:
        cmd += ["--threads", args.threads]
    if args.rest:
        cmd += ["--", *args.rest]
    return cmd


def main(argv: Sequence[str]) -> None:
    """Exec the server of the selected mode (so the suite's SIGTERM reaches it)."""
    mode = os.environ.get("QUORUM_CONFORMANCE_MODE", "llama-server")
    try:
        cmd = quorum_command(argv) if mode == "quorum" else llama_server_command(argv)
    except ShimError as e:
        print(f"conformance shim: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"conformance shim ({mode}): {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
