"""Where the SSH benchmarks run: the user's cluster file, or throwaway namespace hosts."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from quorum_tui.cluster.inventory import Inventory, load_inventory

Bench = Callable[[Inventory, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]


def add_host_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--cluster", type=Path, metavar="FILE", help="the hosts to use")
    where.add_argument("--lab", type=int, metavar="N", help="N throwaway namespace hosts (root)")


def run_on_hosts(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Run `bench` on the cluster file, or on `--lab N` hosts made for it and removed after."""
    if args.lab is None:
        return asyncio.run(bench(load_inventory(args.cluster), args))
    from quorum_tui.cluster.sshlab import temporary_lab

    with temporary_lab(args.lab) as (lab, hosts):
        return asyncio.run(bench(load_inventory(lab.cluster_file(hosts)), args))
