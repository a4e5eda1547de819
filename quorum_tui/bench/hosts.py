"""Where the SSH benchmarks run: the user's cluster file, or throwaway namespace hosts."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from quorum_tui.cluster.inventory import Inventory, load_inventory
from quorum_tui.errors import QuorumError

Bench = Callable[[Inventory, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]


def add_host_args(
    p: argparse.ArgumentParser, default_lab: int | None = None, default_delay_ms: float = 0.0
) -> None:
    """--cluster FILE or --lab N (required unless the benchmark has a default lab)."""
    where = p.add_mutually_exclusive_group(required=default_lab is None)
    where.add_argument("--cluster", type=Path, metavar="FILE", help="the hosts to use")
    lab_help = "N throwaway namespace hosts (root)"
    if default_lab is not None:
        lab_help += f"; the default is {default_lab} with {default_delay_ms:g} ms links"
    where.add_argument("--lab", type=int, metavar="N", help=lab_help)
    p.add_argument(
        "--delay-ms",
        type=float,
        help=f"with --lab: each link's delay, each way (default {default_delay_ms:g})",
    )
    p.add_argument("--rate-mbit", type=float, help="with --lab: each link's rate limit, each way")
    p.set_defaults(default_lab=default_lab, default_delay_ms=default_delay_ms)


def run_on_hosts(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Run `bench` on the cluster file, or on `--lab N` hosts made for it and removed after."""
    if args.cluster is not None:
        if args.delay_ms or args.rate_mbit:
            raise QuorumError(
                "--delay-ms and --rate-mbit shape the links of --lab hosts only: "
                "a --cluster's network is what it is"
            )
        return asyncio.run(bench(load_inventory(args.cluster), args))
    from quorum_tui.lab.sshlab import temporary_lab

    count = args.lab if args.lab is not None else args.default_lab
    if args.delay_ms is None:
        args.delay_ms = args.default_delay_ms
    with temporary_lab(count, delay_ms=args.delay_ms, rate_mbit=args.rate_mbit) as (lab, hosts):
        return asyncio.run(bench(load_inventory(lab.cluster_file(hosts)), args))
