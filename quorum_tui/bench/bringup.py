"""`quorum bench bringup`: wall time to bring up every host vs one host, side by side.

First the cold bring-up of the first host: with `--lab` it has nothing installed, and the
runtime is shipped to it (cluster.shipped); then the others are brought up (installing theirs).
Every timed bring-up after that starts from stopped workers: connect, probe, start the worker,
open the tunnel, HELLO through it. The CPU
load of this machine during each bring-up is reported too, and the busy CPU-seconds per host:
with `--lab` every host shares this machine's CPUs (and its home directory, whose rc files
every remote login shell reads), so a CPU-bound result measures the machine, not the
parallelism.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace
from typing import Any

import psutil

from quorum_tui.bench.hosts import add_host_args, run_on_hosts
from quorum_tui.cluster.bringup import BringUpOptions, bring_up, down
from quorum_tui.cluster.events import HostEvent
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.cluster.shipped import llama_archive


def register(sub: Any) -> None:
    p = sub.add_parser("bringup", help="bring-up wall time of all hosts vs one host")
    add_host_args(p)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--accept-new-host-keys", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_bringup)


def cmd_bench_bringup(args: argparse.Namespace) -> int:
    result = run_on_hosts(args, bench)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        installed = "runtime shipped and installed" if result["cold_installed"] else "reused"
        print(
            f"cold bring-up of one host: {result['cold_s']:.2f}s ({installed}; the shipped "
            f"runtime is {result['runtime_bytes'] / 2**20:.1f} MiB)"
        )
        print(
            f"bring-up of {result['hosts']} hosts: {result['all_s']:.2f}s, of 1 host: "
            f"{result['one_s']:.2f}s, ratio {result['ratio']:.2f} ({args.rounds} round(s)); "
            f"this machine's {result['cores']} CPUs were {result['cpu_busy_all']:.0%} busy "
            f"during the {result['hosts']}-host bring-ups, {result['cpu_busy_one']:.0%} during "
            "the 1-host ones; busy CPU-seconds per host (every process on this machine): "
            f"{result['cpu_s_per_host_all']:.2f} ({result['hosts']} hosts), "
            f"{result['cpu_s_per_host_one']:.2f} (1 host); load average "
            + " ".join(f"{x:.2f}" for x in result["load_average"])
        )
    return 0


async def timed_up(inv: Inventory, options: BringUpOptions) -> tuple[float, float, float]:
    """Wall seconds, how busy this machine's CPUs were meanwhile (0-1, every process), and
    the busy CPU-seconds."""
    cpu = psutil.cpu_times()
    started = time.perf_counter()
    cluster = await bring_up(inv, options)
    elapsed = time.perf_counter() - started
    after = psutil.cpu_times()
    await cluster.close()
    cluster.require_all()
    idle = (after.idle + after.iowait) - (cpu.idle + cpu.iowait)
    total = sum(after) - sum(cpu)
    busy = total - idle
    return elapsed, busy / total if total > 0 else 0.0, busy


async def bench(inv: Inventory, args: argparse.Namespace) -> dict[str, Any]:
    events: list[HostEvent] = []
    options = BringUpOptions(accept_new_host_keys=args.accept_new_host_keys)
    one = replace(inv, hosts=inv.hosts[:1])
    archive = await asyncio.to_thread(llama_archive)
    cold_s, _, _ = await timed_up(one, replace(options, on_event=events.append))
    await timed_up(inv, options)
    runs: dict[str, list[float]] = {"one": [], "all": []}
    busy: dict[str, list[float]] = {"one": [], "all": []}
    cpu_s: dict[str, list[float]] = {"one": [], "all": []}
    for _ in range(args.rounds):
        for key, which in (("one", one), ("all", inv)):
            await down(inv, options)
            wall, cpu, seconds = await timed_up(which, options)
            runs[key].append(wall)
            busy[key].append(cpu)
            cpu_s[key].append(seconds / len(which.hosts))
    await down(inv, options)
    one_s, all_s = statistics.median(runs["one"]), statistics.median(runs["all"])
    return {
        "cold_s": cold_s,
        "cold_installed": any(e.state == "installing" for e in events),
        "runtime_bytes": archive.path.stat().st_size,
        "hosts": len(inv.hosts),
        "rounds": args.rounds,
        "one_s": one_s,
        "all_s": all_s,
        "ratio": all_s / one_s,
        "one_runs": runs["one"],
        "all_runs": runs["all"],
        "cpu_busy_one": statistics.median(busy["one"]),
        "cpu_busy_all": statistics.median(busy["all"]),
        "cpu_s_per_host_one": statistics.median(cpu_s["one"]),
        "cpu_s_per_host_all": statistics.median(cpu_s["all"]),
        "cores": psutil.cpu_count(),
        "load_average": list(psutil.getloadavg()),
    }
