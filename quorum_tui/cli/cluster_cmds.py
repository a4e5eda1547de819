"""Cluster commands: `quorum hosts list|add|remove|check`, `quorum up`, `quorum down`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from quorum_tui.cluster.bringup import BringUpOptions, Cluster, check, down
from quorum_tui.cluster.events import HostEvent, HostKeyQuestion
from quorum_tui.cluster.inventory import (
    TRANSPORTS,
    HostConfig,
    add_host,
    load_inventory,
    remove_host,
)
from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes

Subparsers = Any


def register(sub: Subparsers) -> None:
    hosts = sub.add_parser("hosts", help="the cluster file: list, add, remove and check hosts")
    hosts_sub = hosts.add_subparsers(dest="hosts_command", metavar="ACTION")

    p = hosts_sub.add_parser("list", help="the hosts of the cluster file")
    add_config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = hosts_sub.add_parser("add", help="add a host to the cluster file")
    add_config_arg(p)
    p.add_argument("name")
    p.add_argument("address", help="IP, DNS name or a Host alias from ~/.ssh/config")
    p.add_argument("--user")
    p.add_argument("--port", type=int, help="SSH port")
    p.add_argument("--identity-file")
    p.add_argument("--rpc-port", type=int)
    p.add_argument("--transport", choices=TRANSPORTS)
    p.add_argument("--threads", type=int)
    p.add_argument("--rpc-server", help="use this rpc-server binary on the host")
    p.add_argument(
        "--models-dir", help="copies of models on the host: its worker loads its layers from them"
    )
    p.add_argument("--cache-gib", type=float, help="the most its worker's tensor cache may hold")
    p.set_defaults(func=cmd_add)

    p = hosts_sub.add_parser("remove", help="remove a host from the cluster file")
    add_config_arg(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = hosts_sub.add_parser("check", help="connect, probe each host and report its worker")
    add_config_arg(p)
    add_ssh_args(p)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--watch", action="store_true", help="then show live load until Ctrl-C")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N rounds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    hosts.set_defaults(func=lambda args: hosts.print_help() or 2)

    p = sub.add_parser("up", help="bring every host's worker up and hold the tunnels")
    add_config_arg(p)
    add_ssh_args(p)
    p.add_argument("--no-wait", action="store_true", help="exit once up (workers keep running)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between worker checks")
    p.add_argument("--json", action="store_true", help="print the endpoints as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the workers Quorum started on every host")
    add_config_arg(p)
    add_ssh_args(p)
    p.set_defaults(func=cmd_down)


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="cluster file (default: the config dir's)")


def add_ssh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="trust host keys not yet in known_hosts (never a changed one)",
    )
    p.add_argument("--timeout", type=float, help="SSH connect timeout per host (seconds)")


def cmd_list(args: argparse.Namespace) -> int:
    inv = load_inventory(args.config)
    if args.json:
        print(json.dumps([h.to_toml() for h in inv.hosts], indent=2))
        return 0
    if not inv.hosts:
        print(f"{inv.path}: no hosts")
        return 0
    print(f"{inv.path}:")
    for h in inv.hosts:
        login = f"{h.user}@" if h.user else ""
        port = f":{h.port}" if h.port else ""
        extra = f", rpc_server {h.rpc_server}" if h.rpc_server else ""
        threads = f", {h.threads} threads" if h.threads else ""
        print(
            f"  {h.name:<16} {login}{h.address}{port:<8} rpc port {h.rpc_port}, "
            f"{h.transport}{threads}{extra}"
        )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    values = {
        key: getattr(args, key)
        for key in (
            "user",
            "port",
            "identity_file",
            "rpc_port",
            "transport",
            "threads",
            "models_dir",
            "cache_gib",
        )
        if getattr(args, key) is not None
    }
    if args.rpc_server:
        values["rpc_server"] = args.rpc_server
    inv = add_host(args.config, HostConfig(args.name, args.address, **values))
    print(f"added {args.name} to {inv.path} ({len(inv.hosts)} host(s))")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    inv = remove_host(args.config, args.name)
    print(f"removed {args.name} from {inv.path} ({len(inv.hosts)} host(s) left)")
    return 0


class EventPrinter:
    """Host states and install progress as lines on stderr."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr

    def __call__(self, event: HostEvent) -> None:
        if event.line is not None:
            if event.line.strip():
                print(f"  {event.host} | {event.line}", file=self.out, flush=True)
        else:
            print(f"{event.host}: {event.state}: {event.reason}", file=self.out, flush=True)


async def ask_host_key(question: HostKeyQuestion) -> bool:
    """The CLI's host key prompt: only on a terminal, like ssh."""
    if not sys.stdin.isatty():
        return False
    text = (
        f"{question.host}: the authenticity of {question.address} port {question.port} can't be "
        f"established.\n{question.algorithm} key fingerprint is {question.fingerprint}.\n"
        f"Trust it and add it to {question.known_hosts}? [y/N] "
    )
    answer = await asyncio.to_thread(input, text)
    return answer.strip().lower() in ("y", "yes")


def options_from_args(args: argparse.Namespace, quiet: bool = False) -> BringUpOptions:
    return BringUpOptions(
        accept_new_host_keys=getattr(args, "accept_new_host_keys", False),
        prompt=ask_host_key,
        on_event=None if quiet else EventPrinter(),
        connect_timeout=getattr(args, "timeout", None),
    )


def print_summary(cluster: Cluster, out: TextIO) -> None:
    for r in cluster.results:
        where = r.endpoint or "-"
        print(f"{r.host.name:<16} {r.state:<16} {where:<22} {r.reason}", file=out)
        for warning in r.warnings:
            print(f"warning: {r.host.name}: {warning}", file=out)


def cmd_up(args: argparse.Namespace) -> int:
    inv = load_inventory(args.config)
    return asyncio.run(_up(inv, args))


def print_results(cluster: Any, as_json: bool) -> None:
    """Every host's state: JSON, or the human summary."""
    if as_json:
        print(json.dumps([r.to_json() for r in cluster.results], indent=2), flush=True)
    else:
        print_summary(cluster, sys.stdout)
        sys.stdout.flush()


async def _up(inv: Any, args: argparse.Namespace) -> int:
    from quorum_tui.deploy.deployment import Deployment, Target
    from quorum_tui.deploy.pool import WorkerEvent

    options = options_from_args(args)
    target = Target(cluster_file=inv.path, bring_up=options, all_hosts=False)
    hosts = EventPrinter()

    def printer(event: Any) -> None:
        if isinstance(event, HostEvent):
            hosts(event)
        elif isinstance(event, WorkerEvent):
            print(f"{event.worker.name}: {event.state}: {event.reason}", file=sys.stderr)

    async with Deployment(target, on_event=printer) as deployment:
        deployment.pool.ssh_every = args.interval
        await deployment.connect_workers()
        cluster = deployment.cluster
        assert cluster is not None
        print_results(cluster, args.json)
        if not cluster.up:
            raise QuorumError("no host came up")
        if not args.no_wait:
            print(
                f"{len(cluster.up)} worker(s) up; holding the tunnels and restarting workers "
                "that die, Ctrl-C to close them (the workers keep running; `quorum down` "
                "stops them)",
                file=sys.stderr,
                flush=True,
            )
            await deployment.wait()
    return 0 if not cluster.failed else 1


def cmd_down(args: argparse.Namespace) -> int:
    inv = load_inventory(args.config)
    cluster = asyncio.run(down(inv, options_from_args(args, quiet=True)))
    unreached = [r for r in cluster.results if r.state != "worker-down"]
    for r in cluster.results:
        state = f"{r.state}: " if r in unreached else ""
        print(f"{r.host.name:<16} {state}{r.reason}")
    return 1 if unreached else 0


def cmd_check(args: argparse.Namespace) -> int:
    inv = load_inventory(args.config)
    return asyncio.run(_check(inv, args))


async def _check(inv: Any, args: argparse.Namespace) -> int:
    cluster = await check(inv, options_from_args(args, quiet=args.json), args.names or None)
    try:
        print_results(cluster, args.json)
        if args.watch:
            rounds = 0
            async for samples in cluster.telemetry(args.interval):
                if args.json:
                    print(json.dumps([s.to_json() for s in samples]), flush=True)
                else:
                    print_samples(samples)
                rounds += 1
                if args.count and rounds >= args.count:
                    break
    finally:
        await cluster.close()
    return 0 if all(r.state in ("worker-up", "worker-down") for r in cluster.results) else 1


def print_samples(samples: list[Any]) -> None:
    for s in samples:
        if s.error:
            print(f"{s.host:<16} telemetry failed: {s.error}")
            continue
        print(
            f"{s.host:<16} cpu {s.cpu_percent:5.1f}%  mem {human_bytes(s.mem_used):>10} used, "
            f"{human_bytes(s.mem_available):>10} available  load {s.load[0]:.2f} "
            f"{s.load[1]:.2f} {s.load[2]:.2f}"
        )
    print(flush=True)
