"""`quorum bench ...`: one subcommand per benchmark module under quorum_tui.bench."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

BENCHES: tuple[str, ...] = (
    "engine",
    "spec",
    "failover",
    "chaos",
    "scale",
    "load",
    "plan",
    "download",
    "tunnel",
    "bringup",
    "tui",
)
"""Modules under quorum_tui.bench, each with `register(bench_subparsers)`."""


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks, each measured side by side in one run")
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCH")
    for name in BENCHES:
        importlib.import_module(f"quorum_tui.bench.{name}").register(bench_sub)
    from quorum_tui.bench.current import add_current_args, cmd_bench_current

    add_current_args(p)
    p.set_defaults(func=lambda args: cmd_bench_current(args) if args.model else _help(p, args))


def _help(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    p.print_help()
    return 2
