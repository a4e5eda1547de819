"""The `quorum` command: every action of the app, headless."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from quorum_tui import __version__, logs
from quorum_tui.errors import QuorumError

COMMAND_GROUPS = (
    "engine_cmds",
    "demo_cmds",
    "bench_cmds",
    "models_cmds",
    "tui_cmds",
    "chat_cmds",
    "cluster_cmds",
    "cache_cmds",
    "doctor_cmds",
)
"""Modules under quorum_tui.cli, each with `register(subparsers)`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quorum",
        description="Run one large language model across several machines (llama.cpp RPC).",
    )
    parser.add_argument("--version", action="version", version=f"quorum {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help=f"log to the terminal too (-vv: debug); the log file is {logs.log_path()}",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_GROUPS:
        importlib.import_module(f"quorum_tui.cli.{name}").register(sub)
    parser.set_defaults(func=open_app)
    return parser


def open_app(args: argparse.Namespace) -> int:
    """No subcommand: open the app."""
    from quorum_tui.cli.tui_cmds import cmd_tui

    return cmd_tui(args)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; on a deploying command, what follows `--` is llama-server's own
    options (engine.server_args), kept as `server_args`."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        args, rest = parser.parse_known_args(argv[:cut])
        if hasattr(args, "ctx") and not rest:
            args.server_args = argv[cut + 1 :]
            return args
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    screen = getattr(args, "full_screen", args.func is open_app) and not getattr(
        args, "headless", False
    )
    logs.configure(args.verbose, terminal=not screen)
    try:
        return int(args.func(args) or 0)
    except QuorumError as exc:
        print(f"quorum: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("quorum: interrupted", file=sys.stderr)
        return 130
