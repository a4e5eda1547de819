"""`quorum bench` without a benchmark name: tokens/s and time to first token of your own plan."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from quorum_tui.cluster.bringup import BringUpOptions
from quorum_tui.deploy.deployment import Deployment, Target
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.completion import CompletionRequest
from quorum_tui.engine.plan import parse_split
from quorum_tui.engine.settings import DEFAULT_CTX, DEFAULT_SLOTS, EngineSettings
from quorum_tui.engine.trials import PROMPT
from quorum_tui.errors import QuorumError


def add_current_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Without BENCH: time your own plan (--model with --worker or --cluster, and --split): "
        "tokens/s and time to first token. With BENCH: that benchmark."
    )
    p.add_argument("--model", help="a model spec (your plan's model)")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT")
    p.add_argument(
        "--cluster", type=Path, metavar="FILE", help="bring up these hosts and time through them"
    )
    p.add_argument("--accept-new-host-keys", action="store_true")
    p.add_argument("--split", help="layers per stage, coordinator first: C,W1,...,Wn")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="context per slot (tokens)")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    p.add_argument("--threads", type=int, default=0, help="coordinator threads (default: auto)")
    p.add_argument("-n", "--tokens", type=int, default=32, help="tokens per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--json", action="store_true")


def cmd_bench_current(args: argparse.Namespace) -> int:
    if args.tokens < 1 or args.repeats < 1:
        raise QuorumError("--tokens and --repeats must be at least 1")
    if args.cluster:
        options = BringUpOptions(accept_new_host_keys=args.accept_new_host_keys)
        target = Target(cluster_file=args.cluster, bring_up=options)
        if args.worker:
            raise QuorumError("use either --cluster or --worker, not both")
    else:
        target = Target.endpoints(args.worker)
    settings = EngineSettings(ctx=args.ctx, slots=args.slots, threads=args.threads)
    split = tuple(parse_split(args.split)) if args.split else None
    result = asyncio.run(
        bench_current(target, settings, args.model, PlanRequest(split), args.tokens, args.repeats)
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"plan: {result['summary']}")
    print(
        f"{result['tokens_per_s']:.1f} tokens/s (median of {args.repeats} runs of "
        f"{args.tokens} tokens), time to first token {result['ttft_s'] * 1000:.0f} ms "
        f"(prompt of {result['prompt']!r})"
    )
    return 0


async def bench_current(
    target: Target,
    settings: EngineSettings,
    model: str,
    request: PlanRequest,
    tokens: int,
    repeats: int,
) -> dict[str, Any]:
    """Load the plan once, as `quorum serve` would, and time `repeats` generations."""
    async with Deployment(target, settings) as deployment:
        prepared = await deployment.prepare(model, request)
        await deployment.start(prepared)
        runs = []
        for _ in range(repeats):
            ask = CompletionRequest(PROMPT, tokens, extra={"ignore_eos": True})
            runs.append(await deployment.run(ask))
    plan = prepared.plan
    return {
        "model": str(prepared.path),
        "summary": plan.summary(),
        "counts": list(plan.counts),
        "workers": [{"name": w.name, "endpoint": w.endpoint} for w in plan.workers],
        "realized": list(runs[0].realized),
        "tokens": tokens,
        "repeats": repeats,
        "threads": deployment.threads,
        "prompt": PROMPT,
        "tokens_per_s": statistics.median(r.done.tokens_per_s for r in runs),
        "ttft_s": statistics.median(r.done.ttft_s for r in runs),
        "tokens_per_s_runs": [r.done.tokens_per_s for r in runs],
        "ttft_runs_s": [r.done.ttft_s for r in runs],
    }
