"""The remote worker's entry point: `python -m quorum_tui.cluster.agent --port P ...`.

It imports only what a worker needs (not the CLI), so the runtime venv holds just
llama-cpp-python and platformdirs.
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
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache", type=Path)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    try:
        run_worker(WorkerOptions(args.host, args.port, args.threads, args.cache, args.log))
    except QuorumError as exc:
        print(f"quorum: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
