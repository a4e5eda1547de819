"""`quorum bench scale`: a model no single host can hold, over capped lab hosts, from cold.

`--hosts` lab hosts (default 3), each with its memory capped (`--cap-mib`, default 640: all
that its sshd starts lives in a memory cgroup) behind links with a delay and a rate limit, and
a synthetic model about twice one host's cap and below the sum of the caps. The coordinator,
this process, is capped the same (it moves itself into a cgroup of that size for the run, and
its cap counts in the sum), so it cannot simply hold the model itself; the lab's hosts and the
planner's measuring models are made before it moves. From cold: bring-up over SSH tunnels (the
runtime is shipped to the hosts), an `--auto` plan, the load, a greedy decode, then one worker
is killed mid-reply and the failover's outcome reported (the reply completes when the survivors
can hold the layers, else ends with the clear "short" error). No process may be OOM-killed.

`--json` keys: `model_bytes`, `cap_bytes`, `hosts`, `bringup_s`, `load_s`, `load_bytes` (the
bytes sent over the hosts' links during the load), `load_bound_s` (those bytes at the links'
rate), `decode_tps`, `predicted_tps` (the planner's), `failover` (outcome, pause, reason) and
`oom_kills`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.cluster.bringup import BringUpOptions
from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.deploy.events import DeployEvent
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.completion import CompletionRequest, Piece
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.measure import measuring_layers, shape_spec
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.supervisor import Loaded
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.errors import QuorumError
from quorum_tui.lab.cgroups import MemoryCap
from quorum_tui.lab.sshlab import SshLab, temporary_lab

WIDTH, FEED_FORWARD = 1024, 4096
LAYER_BYTES = 4 * (4 * WIDTH * WIDTH + 3 * WIDTH * FEED_FORWARD)
"""One f32 layer of the synthetic model: attention (4 x width^2) and feed-forward."""
PROMPT = "Once upon a time, in a quiet harbor town,"


def register(sub: Any) -> None:
    p = sub.add_parser("scale", help="a model no single capped host can hold, over lab hosts")
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--cap-mib", type=int, default=640, help="each host's memory cap")
    p.add_argument("--delay-ms", type=float, default=1.0, help="each link's delay, each way")
    p.add_argument("--rate-mbit", type=float, default=1000.0, help="each link's rate limit")
    p.add_argument("-n", "--tokens", type=int, default=32)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_scale)


def cmd_bench_scale(args: argparse.Namespace) -> int:
    if args.hosts < 2:
        raise QuorumError("--hosts must be at least 2: the failover needs a survivor")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mib = 1 << 20
    failover = result["failover"]
    print(
        f"{result['model_bytes'] / mib:.0f} MiB model over {result['hosts']} hosts capped at "
        f"{result['cap_bytes'] / mib:.0f} MiB: plan {result['plan']}"
    )
    print(
        f"bring-up {result['bringup_s']:.1f} s, load {result['load_s']:.1f} s "
        f"({result['load_bytes'] / mib:.0f} MiB over the links, "
        f"{result['load_bound_s']:.1f} s at their rate), decode {result['decode_tps']:.1f} "
        f"tokens/s (planner predicted {result['predicted_tps']:.1f}); failover: "
        f"{failover['outcome']} after a {failover['pause_s']:.1f} s pause; "
        f"OOM kills: {result['oom_kills']}"
    )
    return 0 if result["oom_kills"] == 0 else 1


def link_bytes(lab: SshLab) -> int:
    """Bytes sent so far towards the lab's hosts (the bridge ends of their links)."""
    total = 0
    for veth in lab.links:
        path = Path(f"/sys/class/net/{veth}/statistics/tx_bytes")
        total += int(path.read_text()) if path.exists() else 0
    return total


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cap = args.cap_mib << 20
    layers = max(2, round(2 * cap / LAYER_BYTES))
    if layers * LAYER_BYTES >= (args.hosts + 1) * cap:
        raise QuorumError(
            f"{args.hosts} hosts and the coordinator, {args.cap_mib} MiB each, cannot hold "
            "twice one cap"
        )
    spec = SyntheticSpec(n_layers=layers, n_embd=WIDTH, n_ff=FEED_FORWARD, n_head=8, dtype="f32")
    path = await asyncio.to_thread(
        synthetic_model, spec, paths.ensure(paths.cache_dir() / "synthetic")
    )
    info = await asyncio.to_thread(inspect_model, path)
    directory = paths.ensure(paths.cache_dir() / "synthetic")
    for count in measuring_layers(info):
        await asyncio.to_thread(synthetic_model, shape_spec(info, count), directory)
    with temporary_lab(
        args.hosts, delay_ms=args.delay_ms, rate_mbit=args.rate_mbit, mem_bytes=cap
    ) as (lab, hosts):
        own = MemoryCap.create(f"quorum-bench-scale-{os.getpid()}", cap)
        home = own.enter()
        try:
            result = await run(args, lab, path, info)
        finally:
            own.leave(home)
        result["oom_kills"] = sum(h.cap.oom_kills() for h in hosts if h.cap) + own.oom_kills()
        own.remove()
    result.update(model_bytes=path.stat().st_size, cap_bytes=cap, hosts=args.hosts)
    return result


async def run(args: argparse.Namespace, lab: SshLab, path: Path, info: Any) -> dict[str, Any]:
    seen: list[DeployEvent] = []
    options = BringUpOptions(accept_new_host_keys=True)
    target = Target(cluster_file=lab.cluster_file(lab.hosts), bring_up=options)
    settings = EngineSettings(ctx=512, slots=1)
    async with Deployment(target, settings, on_event=seen.append) as deployment:
        started = time.monotonic()
        await deployment.connect_workers()
        bringup_s = time.monotonic() - started
        plan, explanation = await deployment.plan(info, PlanRequest(auto=True))
        sent = link_bytes(lab)
        await deployment.start(Prepared(path, info, plan, explanation))
        load_bytes = link_bytes(lab) - sent
        load_s = next(e.load_s for e in seen if isinstance(e, Loaded))
        request = CompletionRequest(PROMPT, args.tokens, extra={"ignore_eos": True})
        decoded = await deployment.run(request)
        failover = await fail_over(deployment, plan)
    rate = args.rate_mbit * 1e6 / 8
    return {
        "plan": plan.summary(),
        "bringup_s": bringup_s,
        "load_s": load_s,
        "load_bytes": load_bytes,
        "load_bound_s": load_bytes / rate if rate else 0.0,
        "decode_tps": decoded.done.tokens_per_s,
        "predicted_tps": explanation.predicted_tps if explanation else math.nan,
        "failover": failover,
        "delay_ms": args.delay_ms,
        "rate_mbit": args.rate_mbit,
    }


async def fail_over(deployment: Deployment, plan: Any) -> dict[str, Any]:
    """Kill the worker of the plan's busiest host mid-reply (see `kill_mid_reply`)."""
    victim = max(plan.workers, key=lambda w: plan.counts[plan.workers.index(w) + 1])
    return await kill_mid_reply(deployment, victim.name, 96)


async def kill_mid_reply(
    deployment: Deployment, victim: str, tokens: int, kill_at: int = 8
) -> dict[str, Any]:
    """Kill `victim`'s worker after `kill_at` tokens of a `tokens`-token reply: did the reply
    complete, and how long did the client wait for its next token?"""
    host = next(r for r in deployment.pool.host_results() if r.host.name == victim)
    assert host.pid is not None
    children = subprocess.run(["pgrep", "-P", str(host.pid)], capture_output=True, text=True)
    request = CompletionRequest(PROMPT, tokens, extra={"ignore_eos": True})
    pieces, last, pause, killed = 0, time.monotonic(), 0.0, False
    try:
        async for item in deployment.generate(request):
            if not isinstance(item, Piece):
                continue
            now = time.monotonic()
            if killed:
                pause = max(pause, now - last)
            last, pieces = now, pieces + 1
            if pieces == kill_at and not killed:
                for pid in children.stdout.split():
                    os.kill(int(pid), signal.SIGKILL)
                killed = True
    except QuorumError as exc:
        return {"outcome": "ended with the error", "pause_s": pause, "reason": str(exc),
                "victim": victim, "tokens": pieces}  # fmt: skip
    return {"outcome": "completed", "pause_s": pause, "reason": "", "victim": victim,
            "tokens": pieces}  # fmt: skip
