"""`quorum bench` without a benchmark name: tokens/s and time to first token of your own plan."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from quorum_tui.engine.measure import PROMPT, Trial, run_trials
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.errors import QuorumError


def add_current_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Without BENCH: time your own plan (--model with --worker or --cluster, and --split): "
        "tokens/s and time to first token. With BENCH: that benchmark."
    )
    p.add_argument("--model", help="a .gguf path or synthetic:layers=N,... (your plan's model)")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT")
    p.add_argument(
        "--cluster", type=Path, metavar="FILE", help="bring up these hosts and time through them"
    )
    p.add_argument("--accept-new-host-keys", action="store_true")
    p.add_argument("--split", help="layers per stage, coordinator first: C,W1,...,Wn")
    p.add_argument("--ctx", type=int, default=2048, help="context length (tokens)")
    p.add_argument("-n", "--tokens", type=int, default=32, help="tokens per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--json", action="store_true")


def cmd_bench_current(args: argparse.Namespace) -> int:
    from quorum_tui.cli.engine_cmds import prepare

    if args.tokens < 1 or args.repeats < 1:
        raise QuorumError("--tokens and --repeats must be at least 1")
    if args.cluster:
        result = asyncio.run(bench_on_cluster(args))
    else:
        path, _, plan = prepare(args)
        result = asyncio.run(bench_current(str(path), plan, args.ctx, args.tokens, args.repeats))
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


async def bench_on_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """Bring up the cluster file's hosts (as `quorum run --cluster` does) and time the plan
    through their tunnels; the workers stay up afterwards, like after a run."""
    from quorum_tui.cli.cluster_cmds import brought_up
    from quorum_tui.cli.engine_cmds import plan_from_args, resolve
    from quorum_tui.engine.gguf_info import inspect_model

    if args.worker:
        raise QuorumError("use either --cluster or --worker, not both")
    path = resolve(args.model)
    info = inspect_model(path)
    async with brought_up(args, quiet=args.json) as cluster:
        plan = plan_from_args(info, cluster.workers, args.split)
        return await bench_current(str(path), plan, args.ctx, args.tokens, args.repeats)


async def bench_current(
    model: str, plan: LayerPlan, ctx: int, tokens: int, repeats: int
) -> dict[str, Any]:
    """Load the plan once and time `repeats` generations of `tokens` tokens."""
    trial = Trial("current", model, list(plan.counts))
    (result,) = await run_trials(plan.workers, [trial], tokens, repeats, ctx=ctx)
    if result.mismatch:
        raise QuorumError(f"llama.cpp did not load the plan: {'; '.join(result.mismatch)}")
    return {
        "model": model,
        "summary": plan.summary(),
        "counts": list(plan.counts),
        "workers": [{"name": w.name, "endpoint": w.endpoint} for w in plan.workers],
        "realized": result.realized,
        "tokens": tokens,
        "repeats": repeats,
        "prompt": PROMPT,
        "tokens_per_s": result.tokens_per_s,
        "ttft_s": result.ttft,
        "per_token_s": result.per_token_s,
        "ttft_runs_s": result.ttft_s,
    }
