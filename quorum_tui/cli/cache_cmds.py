"""`quorum cache`: the workers' tensor caches on the cluster file's hosts and on this machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from quorum_tui.cli.cluster_cmds import add_config_arg, add_ssh_args, ask_host_key
from quorum_tui.cluster.caches import HostCache, close_caches, open_caches
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.engine.weights import known_manifests
from quorum_tui.engine.worker import default_cache_dir
from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes

HERE = "here"


def register(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the workers' tensor caches: list, verify, clear")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")

    p = cache_sub.add_parser("list", help="per host, the models whose tensors it caches")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = cache_sub.add_parser(
        "verify", help="hash every cached tensor; remove those whose bytes do not match"
    )
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = cache_sub.add_parser("clear", help="remove a model's cached tensors, or all of them")
    _common(p)
    p.add_argument("--model", help="only this model's (its file name, as `list` shows it)")
    p.set_defaults(func=cmd_clear)
    cache.set_defaults(func=lambda args: cache.print_help() or 2)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    add_ssh_args(p)
    p.add_argument(
        "names",
        nargs="*",
        metavar="HOST",
        help=f"hosts of the cluster file ('{HERE}': this machine)",
    )


def cmd_list(args: argparse.Namespace) -> int:
    async def one(cache: HostCache) -> dict[str, Any]:
        return asdict(await cache.listing())

    results = asyncio.run(_each(args, one))
    if args.json:
        print(json.dumps(results, indent=2))
        return _status(results)
    for name, found in results.items():
        if "error" in found:
            print(f"{name}: {found['error']}")
            continue
        print(f"{name}: {found['dir']} ({human_bytes(found['free'])} free on its disk)")
        for m in found["models"]:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["used"]))
            print(f"  {m['model']:<40} {m['files']:>5} files {human_bytes(m['bytes']):>10}"
                  f"  last used {used}")  # fmt: skip
        if found["other_files"]:
            size = human_bytes(found["other_bytes"])
            label = "(no model recorded: pushed by llama.cpp)"
            print(f"  {label:<40} {found['other_files']:>5} files {size:>10}")
        if not found["models"] and not found["other_files"]:
            print("  empty")
    return _status(results)


def cmd_verify(args: argparse.Namespace) -> int:
    manifests = known_manifests()

    async def one(cache: HostCache) -> dict[str, Any]:
        return asdict(await cache.verify(manifests))

    results = asyncio.run(_each(args, one))
    bad_total = sum(len(r.get("bad", ())) for r in results.values())
    status = 1 if bad_total or _status(results) else 0
    if args.json:
        print(json.dumps(results, indent=2))
        return status
    for name, found in results.items():
        if "error" in found:
            print(f"{name}: {found['error']}")
            continue
        line = f"{name}: {found['checked']} files ({human_bytes(found['bytes'])}) checked"
        line += f", {len(found['bad'])} bad and removed" if found["bad"] else ", all good"
        if found["unknown"]:
            line += (
                f"; {found['unknown']} not checked (no manifest here names them: load their "
                "model once on this machine, or clear them)"
            )
        print(line)
        for bad in found["bad"]:
            print(f"  removed {bad}: its bytes are not the tensor it is named for")
    return status


def cmd_clear(args: argparse.Namespace) -> int:
    async def one(cache: HostCache) -> dict[str, Any]:
        files, size = await cache.clear(args.model)
        return {"files": files, "bytes": size}

    results = asyncio.run(_each(args, one))
    for name, found in results.items():
        if "error" in found:
            print(f"{name}: {found['error']}")
        else:
            print(f"{name}: removed {found['files']} files ({human_bytes(found['bytes'])})")
    return _status(results)


async def _each(
    args: argparse.Namespace, work: Callable[[HostCache], Awaitable[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """`work` on each named cache (all: this machine's, then every host's), by name."""
    names = list(args.names)
    here = not names or HERE in names
    hosts = [n for n in names if n != HERE]
    inv = load_inventory(args.config, missing_ok=not hosts)
    prompt = _accept if args.accept_new_host_keys else ask_host_key
    caches: list[HostCache] = []
    unused: list[tuple[str, str]] = []
    if hosts or not names:
        caches, unused = await open_caches(inv, hosts or None, prompt, args.timeout)
    if here:
        caches.insert(0, HostCache(HERE, local=default_cache_dir()))
    results: dict[str, dict[str, Any]] = {}
    try:
        answers = await asyncio.gather(*(work(c) for c in caches), return_exceptions=True)
        for cache, answer in zip(caches, answers, strict=True):
            if isinstance(answer, QuorumError):
                results[cache.name] = {"error": str(answer)}
            elif isinstance(answer, BaseException):
                raise answer
            else:
                results[cache.name] = answer
    finally:
        await close_caches(caches)
    for name, why in unused:
        results[name] = {"error": why}
    return results


async def _accept(question: Any) -> bool:
    return True


def _status(results: dict[str, dict[str, Any]]) -> int:
    return 1 if any("error" in r for r in results.values()) else 0
