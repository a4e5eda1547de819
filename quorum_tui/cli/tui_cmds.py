"""`quorum` with no arguments, and `quorum tui`: the Textual app."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from quorum_tui.cli.deploy_args import (
    add_engine_args,
    add_worker_arg,
    settings_from_args,
    workers_from_args,
)
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="open the Quorum app (what `quorum` alone does)")
    p.add_argument("--model", help="a model spec to load at start")
    add_worker_arg(p, help="a worker to plan over (repeatable)")
    add_engine_args(p)
    p.add_argument("--temp", type=float, help="the Chat's temperature (default: the server's)")
    p.set_defaults(func=cmd_tui, full_screen=True)


def cluster_file_exists() -> bool:
    from quorum_tui import paths

    return (paths.config_dir() / "cluster.toml").exists()


def cmd_tui(args: argparse.Namespace) -> int:
    from quorum_tui.tui.app import QuorumApp
    from quorum_tui.tui.session import Setup

    workers = workers_from_args(args)
    settings = settings_from_args(args) if hasattr(args, "ctx") else EngineSettings()
    try:
        settings = settings.with_server_args(load_inventory(missing_ok=True).server_args)
    except QuorumError as exc:
        log.warning("the cluster file's llama-server options are not used: %s", exc)
    setup = Setup(
        model=getattr(args, "model", None),
        workers=workers,
        settings=settings,
        temperature=getattr(args, "temp", None),
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
