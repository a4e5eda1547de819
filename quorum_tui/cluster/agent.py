"""The remote worker's entry point: `python -m quorum_tui.cluster.agent --port P ...`.

It imports only what a worker needs (not the CLI): the standard library, platformdirs and the
llama.cpp build named by QUORUM_LLAMA_BUILD (the runtime's `worker` command sets it). With
`--check` it proves which CPU backend of that build this host runs, and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quorum_tui.errors import QuorumError


def main(argv: list[str] | None = None) -> int:
    from quorum_tui.engine.worker import WorkerOptions, run_worker

    p = argparse.ArgumentParser(prog="quorum-agent")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache", type=Path)
    p.add_argument("--log", type=Path)
    p.add_argument("--check", action="store_true", help="prove the CPU backend, print it, exit")
    p.add_argument("--exit-with-parent", action="store_true")
    args = p.parse_args(argv)
    if not args.check and not args.port:
        p.error("--port is required")
    try:
        if args.check:
            from quorum_tui.engine.cpucheck import cpu_verdict

            print(cpu_verdict().summary())
            return 0
        options = WorkerOptions(
            args.host, args.port, args.threads, args.cache, args.log, args.exit_with_parent
        )
        run_worker(options)
    except QuorumError as exc:
        print(f"quorum: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
