"""`quorum bench load`: a load pushed by the coordinator against one from the hosts' own copies,
and a failover's pause with and without the layers staged beforehand.

`--hosts` lab hosts (default 2, 2 or 3), each with its own tensor cache, behind links with a
delay and a rate limit (`--delay-ms` 1, `--rate-mbit` 100, each way), and a synthetic model
shaped like a real one (most of its bytes in tensors over llama.cpp's hash threshold) of at
least 300 MB unless `--layers` says how many layers. The plan puts no layer on the coordinator
and splits the layers evenly over the hosts. Side by side, in one run:

1. pushed load: empty caches, hosts with no copy of the model: the coordinator sends every
   tensor over the links. Then, serving, the last host's worker is killed mid-reply with
   staging off (its layers move to the host before it, whose cache lacks them: they are pushed
   during the failover): the unstaged failover pause.
2. home load: caches emptied, each host's `models_dir` holds (a hard link of) the model: each
   host fills its cache from its own copy, and llama.cpp sends hashes for those tensors. Then
   the same plan again, every cache holding its layers: the reload.
3. staged failover: caches emptied, hosts with no copy, staging on: once the layers a failover
   would move have been streamed to the hosts in the background, the same kill.

Times are wall clock around `Deployment.start`; bytes are those sent over the hosts' links
during it. A failover's pause is the longest wait between two tokens of the streamed reply.

`--json` keys: `pushed_load_s`, `home_load_s`, `pushed_bytes`, `home_bytes`, `home_fill_s` (the
slowest host's fill from its own copy, part of `home_load_s`), `home_sources`, `home_ratio`
(`home_load_s` / `pushed_load_s`; the target is at most 0.2), `reload_s`, `reload_bytes`,
`failover_pause_s` (`staged`, `unstaged`; the target for `staged` is `reload_s` + 2 s),
`failover` (per kind: outcome, pause, reason, victim, tokens, `bytes` sent over the links
during the reply, the plan after it and its `failover_s`), `staging_s` (serving to staged),
`staged` (per host: bytes staged, of how many, from where), `worker_back` (how the killed
worker came back for the next run), `model_bytes`, `layers`, `plan`, `hosts`, `rate_mbit`,
`delay_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.bench.scale import kill_mid_reply, link_bytes
from quorum_tui.cluster.bringup import BringUpOptions
from quorum_tui.cluster.caches import HostCache
from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.deploy.events import DeployEvent, FailedOver
from quorum_tui.deploy.placement import WeightsPlaced
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.errors import QuorumError
from quorum_tui.lab.sshlab import LabHost, SshLab, temporary_lab

SHAPE = {"n_embd": 2048, "n_ff": 5504, "n_head": 16, "n_head_kv": 4, "n_vocab": 800}
"""A small real model's layer: 4 attention and 3 feed-forward matrices, grouped KV heads."""
LAYER_BYTES = 4 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 5504)
"""One f32 layer of that shape (about 177 MB, 95% of it in tensors over 10 MiB)."""
MIN_MODEL_BYTES = 300_000_000
KILL_AT = 8
"""The reply's token after which the victim's worker is killed."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "load", help="pushed load against the hosts' own copies; failover staged or not"
    )
    p.add_argument("--hosts", type=int, default=2, help="lab hosts (2 or 3)")
    p.add_argument("--delay-ms", type=float, default=1.0, help="each link's delay, each way")
    p.add_argument("--rate-mbit", type=float, default=100.0, help="each link's rate limit")
    p.add_argument(
        "--layers", type=int, default=0, help="the model's layers (default: at least 300 MB)"
    )
    p.add_argument("-n", "--tokens", type=int, default=64, help="tokens of the killed reply")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_load)


def cmd_bench_load(args: argparse.Namespace) -> int:
    if not 2 <= args.hosts <= 3:
        raise QuorumError("--hosts: give 2 or 3 (a failover needs a host to move layers to)")
    if args.layers and args.layers < args.hosts:
        raise QuorumError(f"--layers {args.layers}: give each of the {args.hosts} hosts a layer")
    if args.tokens <= KILL_AT + 8:
        raise QuorumError(f"-n {args.tokens}: the reply must outlast the kill at token {KILL_AT}")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mib = 1 << 20
    pause, failover = result["failover_pause_s"], result["failover"]
    print(
        f"{result['model_bytes'] / mib:.0f} MiB model ({result['layers']} layers) over "
        f"{result['hosts']} hosts ({result['plan']}), links {result['rate_mbit']:g} Mbit/s "
        f"with {result['delay_ms']:g} ms delay"
    )
    print(
        f"pushed load {result['pushed_load_s']:.1f} s ({result['pushed_bytes'] / mib:.0f} MiB "
        f"over the links); from the hosts' own copies {result['home_load_s']:.1f} s "
        f"({result['home_bytes'] / mib:.0f} MiB; the fill took {result['home_fill_s']:.1f} s): "
        f"{result['home_ratio']:.2f} of the pushed load (target at most 0.2)"
    )
    print(f"reload with every layer cached: {result['reload_s']:.1f} s")
    print(
        f"failover pause: {pause['unstaged']:.1f} s unstaged ({failover['unstaged']['outcome']}), "
        f"{pause['staged']:.1f} s staged ({failover['staged']['outcome']}; staging took "
        f"{result['staging_s']:.1f} s; target at most the reload + 2 s = "
        f"{result['reload_s'] + 2:.1f} s)"
    )
    completed = all(f["outcome"] == "completed" for f in failover.values())
    return 0 if completed else 1


def layer_count(hosts: int, layers: int) -> int:
    """`layers`, or the fewest (a multiple of `hosts`) that make the model 300 MB or more."""
    if layers:
        return layers
    return hosts * math.ceil(MIN_MODEL_BYTES / LAYER_BYTES / hosts)


def even_split(layers: int, hosts: int) -> tuple[int, ...]:
    """No layer on the coordinator, the layers evenly over the hosts (the first get more)."""
    base, extra = divmod(layers, hosts)
    return (0, *(base + (i < extra) for i in range(hosts)))


def shelve(model: Path, shelf: Path) -> Path:
    """A folder holding the model, as a host's own copy: a hard link (a symlink across file
    systems)."""
    shelf.mkdir(parents=True, exist_ok=True)
    copy = shelf / model.name
    try:
        copy.hardlink_to(model)
    except OSError:
        copy.symlink_to(model)
    return shelf


async def clear_caches(hosts: Sequence[LabHost]) -> None:
    """Empty every host's tensor cache (each lab host's lies on this machine)."""
    for host in hosts:
        folder = Path(host.env["QUORUM_CACHE_DIR"]) / "rpc-cache"
        await HostCache(host.name, local=folder).clear()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    layers = layer_count(args.hosts, args.layers)
    spec = SyntheticSpec(n_layers=layers, dtype="f32", **SHAPE)
    directory = paths.ensure(paths.cache_dir() / "synthetic")
    path = await asyncio.to_thread(synthetic_model, spec, directory)
    with temporary_lab(
        args.hosts, delay_ms=args.delay_ms, rate_mbit=args.rate_mbit, own_caches=True
    ) as (lab, hosts):
        result = await run(args, lab, hosts, path, PlanRequest(even_split(layers, args.hosts)))
    result.update(
        model_bytes=path.stat().st_size,
        layers=layers,
        hosts=args.hosts,
        rate_mbit=args.rate_mbit,
        delay_ms=args.delay_ms,
    )
    return result


class Run:
    """One deployment over the lab's hosts, with the events it emitted."""

    def __init__(self, lab: SshLab, cluster: Path, stage: bool) -> None:
        self.lab = lab
        self.seen: list[DeployEvent] = []
        target = Target(cluster_file=cluster, bring_up=BringUpOptions(accept_new_host_keys=True))
        settings = EngineSettings(ctx=512, slots=1, threads=1)
        self.deployment = Deployment(
            target, settings, on_event=self.seen.append, rejoin_after=None, stage_weights=stage
        )

    async def start(self, prepared: Prepared) -> tuple[float, int]:
        """Serve `prepared`: the wall time it took and the bytes sent over the links."""
        sent, started = link_bytes(self.lab), time.monotonic()
        await self.deployment.start(prepared)
        return time.monotonic() - started, link_bytes(self.lab) - sent

    def placed(self, purpose: str) -> list[WeightsPlaced]:
        return [e for e in self.seen if isinstance(e, WeightsPlaced) and e.purpose == purpose]


async def run(
    args: argparse.Namespace, lab: SshLab, hosts: list[LabHost], path: Path, split: PlanRequest
) -> dict[str, Any]:
    shelf = shelve(path, lab.root / "shelf")
    pushed = lab.cluster_file(hosts)
    home = lab.cluster_file(hosts, extra={h.name: {"models_dir": str(shelf)} for h in hosts})
    victim = hosts[-1].name
    result: dict[str, Any] = {}
    failover: dict[str, Any] = {}

    await clear_caches(hosts)
    first = Run(lab, pushed, stage=False)
    async with first.deployment as deployment:
        prepared = await deployment.prepare(str(path), split)
        result["plan"] = prepared.plan.summary()
        result["pushed_load_s"], result["pushed_bytes"] = await first.start(prepared)
        failover["unstaged"] = await fail_over_mid_reply(first, victim, args.tokens)

    await clear_caches(hosts)
    second = Run(lab, home, stage=False)
    async with second.deployment as deployment:
        prepared = await deployment.prepare(str(path), split)
        result["worker_back"] = came_back(deployment, victim)
        result["home_load_s"], result["home_bytes"] = await second.start(prepared)
        result["home_fill_s"] = max((e.seconds for e in second.placed("load")), default=0.0)
        result["home_sources"] = {e.worker.name: e.source for e in second.placed("load")}
        result["reload_s"], result["reload_bytes"] = await second.start(prepared)

    await clear_caches(hosts)
    third = Run(lab, pushed, stage=True)
    async with third.deployment as deployment:
        prepared = await deployment.prepare(str(path), split)
        await third.start(prepared)
        started = time.monotonic()
        rate = args.rate_mbit * 1e6 / 8 or 1e9
        limit = 120 + 4 * path.stat().st_size / rate
        await asyncio.wait_for(deployment.weights.staged.wait(), limit)
        result["staging_s"] = time.monotonic() - started
        result["staged"] = {
            e.worker.name: {"cached": e.cached, "total": e.total, "source": e.source}
            for e in third.placed("staging")
        }
        failover["staged"] = await fail_over_mid_reply(third, victim, args.tokens)

    result["home_ratio"] = result["home_load_s"] / result["pushed_load_s"]
    result["failover_pause_s"] = {kind: f["pause_s"] for kind, f in failover.items()}
    result["failover"] = failover
    return result


def came_back(deployment: Deployment, name: str) -> str:
    """How the worker killed in the run before serves again: the bring-up started it anew, or
    the last deployment's watch had already restarted it."""
    host = next(r for r in deployment.pool.host_results() if r.host.name == name)
    return "reused a restarted worker" if host.reused else "started again by the bring-up"


async def fail_over_mid_reply(run: Run, victim: str, tokens: int) -> dict[str, Any]:
    """Kill `victim`'s worker mid-reply (bench.scale's way), with the bytes sent over the
    links during the reply, the plan after the failover and how long it took."""
    sent = link_bytes(run.lab)
    result = await kill_mid_reply(run.deployment, victim, tokens, KILL_AT)
    moved = [e for e in run.seen if isinstance(e, FailedOver)]
    return {
        **result,
        "bytes": link_bytes(run.lab) - sent,
        "plan_after": moved[-1].plan.summary() if moved else "",
        "failover_s": moved[-1].seconds if moved else None,
    }
