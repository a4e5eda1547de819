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


def add_host_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--cluster", type=Path, metavar="FILE", help="the hosts to use")
    where.add_argument("--lab", type=int, metavar="N", help="N throwaway namespace hosts (root)")
    p.add_argument(
        "--delay-ms", type=float, default=0.0, help="with --lab: each link's delay, each way"
    )
    p.add_argument("--rate-mbit", type=float, help="with --lab: each link's rate limit, each way")


def run_on_hosts(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Run `bench` on the cluster file, or on `--lab N` hosts made for it and removed after."""
    if args.lab is None:
        if args.delay_ms or args.rate_mbit:
            raise QuorumError(
                "--delay-ms and --rate-mbit shape the links of --lab hosts only: "
                "a --cluster's network is what it is"
            )
        return asyncio.run(bench(load_inventory(args.cluster), args))
    from quorum_tui.cluster.sshlab import temporary_lab

    with temporary_lab(args.lab, delay_ms=args.delay_ms, rate_mbit=args.rate_mbit) as (lab, hosts):
        return asyncio.run(bench(load_inventory(lab.cluster_file(hosts)), args))
