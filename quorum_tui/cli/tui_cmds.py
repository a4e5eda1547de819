"""`quorum` with no arguments, and `quorum tui`: the Textual app."""

from __future__ import annotations

import argparse
from typing import Any

from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.plan import WorkerRef


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="open the Quorum app (what `quorum` alone does)")
    p.add_argument("--model", help="a model spec to load at start")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT",
                   help="a worker to plan over (repeatable)")  # fmt: skip
    p.add_argument("--ctx", type=int, default=2048, help="context length (default 2048)")
    p.set_defaults(func=cmd_tui)


def cluster_file_exists() -> bool:
    from quorum_tui import paths

    return (paths.config_dir() / "cluster.toml").exists()


def cmd_tui(args: argparse.Namespace) -> int:
    from quorum_tui.tui.app import QuorumApp
    from quorum_tui.tui.session import Setup

    workers = []
    for index, endpoint in enumerate(getattr(args, "worker", None) or [], start=1):
        parse_endpoint(endpoint, numeric=False)
        workers.append(WorkerRef(f"w{index}", endpoint))
    setup = Setup(
        model=getattr(args, "model", None),
        workers=workers,
        ctx=getattr(args, "ctx", 2048),
        offer_demo=not workers and not cluster_file_exists(),
    )
    run_app(QuorumApp(setup))
    return 0


def run_app(app: Any) -> None:
    """Run the app; whatever it started locally stops with it."""
    try:
        app.run()
    finally:
        app.stop_cluster()
