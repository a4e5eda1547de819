"""`quorum bench plan`: the planner's split against llama.cpp's default, an even split and the best.

On a local cluster of two workers made unequal (one pinned to the first CPU, one to the last
CPU with `--w2-threads` threads; each with its own memory cap, and a capped coordinator), in one
run: measure the stages, plan, screen every split that fits (every subset and order of the
workers, every count) once, then time the planner's split, llama.cpp's memory-proportional
default, the even split and the best few of the screening side by side in interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.measure import measure_cluster
from quorum_tui.engine.plan import LayerPlan, WorkerRef, even_counts
from quorum_tui.engine.planner import ClusterProfile, CostModel, compositions, explain, solve
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.engine.trials import Trial, TrialResult, run_trials
from quorum_tui.errors import QuorumError


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="planner vs llama.cpp default vs even vs exhaustive best")
    p.add_argument("--json", action="store_true")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--embd", type=int, default=512)
    p.add_argument("--tokens", type=int, default=4, help="tokens per timed burst")
    p.add_argument("--rounds", type=int, default=24, help="interleaved rounds of the finalists")
    p.add_argument("--screen-tokens", type=int, default=6, help="tokens per screening burst")
    p.add_argument("--finalists", type=int, default=3, help="best screened splits re-timed")
    p.add_argument(
        "--w2-threads", type=int, default=1, help="threads of the second worker (on one CPU)"
    )
    p.set_defaults(func=cmd_bench_plan)


def cmd_bench_plan(args: argparse.Namespace) -> int:
    if args.layers < 2 or args.layers > 12:
        raise QuorumError("--layers must be between 2 and 12 (the exhaustive search grows fast)")
    small = [
        name
        for name in ("tokens", "rounds", "screen_tokens", "w2_threads")
        if getattr(args, name) < 1
    ]
    if small or args.embd < 64 or args.embd % 64:
        what = ", ".join(f"--{n.replace('_', '-')}" for n in small) or "--embd"
        raise QuorumError(f"{what}: give whole numbers >= 1 (--embd: a multiple of 64)")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)
    return 0


def layer_cap(cost: CostModel, count: int, output: bool) -> int:
    """Memory that holds `count` layers at any position (with the output layer if asked)."""
    n = cost.info.n_layers
    return max(cost.memory(f, count, False, output).total for f in range(n - count + 1))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quorum-bench-plan-") as tmp:
        directory = Path(tmp)
        spec = SyntheticSpec(n_layers=args.layers, n_embd=args.embd, n_vocab=2048)
        model = synthetic_model(spec, directory)
        info = inspect_model(model)
        ctx = 256
        cost = CostModel(info, ctx)
        n = info.n_layers
        caps_layers = {"w1": (n + 1) // 2 + 1, "w2": n - 2}
        coordinator_layers = max(n // 4, 1)
        with LocalCluster(directory / "workers") as cluster:
            await asyncio.to_thread(_start, cluster, args.w2_threads)
            refs = cluster.refs
            caps = {r.endpoint: layer_cap(cost, caps_layers[r.name], True) for r in refs}
            coord_cap = cost.memory(0, coordinator_layers, True, False).total
            measured = await measure_cluster(
                info, refs, caps, coord_cap, args.tokens, 2 * args.rounds, model_dir=directory
            )
            profile = measured.profile
            planned = solve(info, ctx, profile)
            if planned.plan is None:
                raise QuorumError("the planner found no plan for the benchmark cluster")
            screened = await screen(model, info, ctx, profile, refs, args.screen_tokens)
            finalists = screened[: max(args.finalists, 1)]
            even = LayerPlan.from_counts(n, even_counts(n, len(refs)), refs)
            entries = {
                "planner": _trial(str(model), "planner", planned.plan),
                "default": Trial("default", str(model), None),
                "even": _trial(str(model), "even", even),
            }
            for index, (plan, _) in enumerate(finalists):
                entries[f"best{index + 1}"] = _trial(str(model), f"best{index + 1}", plan)
            timed = await rounds(entries, refs, args.tokens, args.rounds, ctx)
        best_name = max(
            (k for k in entries if k.startswith("best") or k == "planner"),
            key=lambda k: timed[k].tokens_per_s,
        )
        out = _report(info, ctx, profile, refs, entries, timed, best_name)
        out["profile"] = measured.to_json()
        out["planner_explanation"] = planned.to_json()
        out["screened"] = [
            {"counts": list(p.counts), "workers": [w.name for w in p.workers], "tokens_per_s": tps}
            for p, tps in screened
        ]
        out["caps_layers"] = {"coordinator": coordinator_layers, **caps_layers}
        out["elapsed_s"] = time.perf_counter() - started
        return out


def _start(cluster: LocalCluster, threads: int) -> None:
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    cluster.add("w1", threads=1, prefix=["taskset", "-c", str(cpus[0])])
    cluster.add("w2", threads=threads, prefix=["taskset", "-c", str(cpus[-1])])


async def screen(
    model: Path,
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    refs: Sequence[WorkerRef],
    tokens: int,
) -> list[tuple[LayerPlan, float]]:
    """Time every split that fits once: every subset and order of the workers, every count."""
    by_name = {r.name: r for r in refs}
    plans = []
    n = info.n_layers
    for k in range(len(refs) + 1):
        for order in itertools.permutations([r.name for r in refs], k):
            workers = [by_name[name] for name in order]
            for counts in compositions(n, k):
                plan = LayerPlan.from_counts(n, counts, workers)
                if all(s.fits for s in explain(info, ctx, profile, plan).stages):
                    plans.append(plan)
    trials = [_trial(str(model), p.summary(), p) for p in plans]
    results = await run_trials(refs, trials, tokens, 2, keep_loaded=True, ctx=ctx)
    timed = [(p, r.tokens_per_s) for p, r in zip(plans, results, strict=True)]
    return sorted(timed, key=lambda item: -item[1])


def _trial(model: str, label: str, plan: LayerPlan) -> Trial:
    return Trial(label, model, list(plan.counts), [w.name for w in plan.workers])


async def rounds(
    trials: dict[str, Trial], refs: Sequence[WorkerRef], tokens: int, count: int, ctx: int
) -> dict[str, TrialResult]:
    """Time every trial `count` times in one child, interleaved round by round."""
    names = list(trials)
    timed = await run_trials(refs, list(trials.values()), tokens, count, ctx=ctx)
    for name, result in zip(names, timed, strict=True):
        if result.mismatch:
            raise QuorumError(f"{name}: llama.cpp did not load the plan: {result.mismatch}")
    return dict(zip(names, timed, strict=True))


def _report(
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    refs: Sequence[WorkerRef],
    entries: dict[str, Trial],
    timed: dict[str, TrialResult],
    best_name: str,
) -> dict[str, Any]:
    by_name = {r.name: r for r in refs}
    rows = {}
    for name, trial in entries.items():
        result = timed[name]
        key = trial.workers if trial.workers is not None else [r.name for r in refs]
        workers = [by_name[w] for w in key]
        row: dict[str, Any] = {
            "workers": key,
            "counts": trial.counts,
            "realized": result.realized,
            "tokens_per_s": result.tokens_per_s,
            "ttft_s": result.ttft,
            "per_token_s": result.per_token_s,
        }
        if trial.counts is not None:
            plan = LayerPlan.from_counts(info.n_layers, trial.counts, workers)
            estimate = explain(info, ctx, profile, plan)
            row["summary"] = plan.summary()
            row["predicted_tps"] = estimate.predicted_tps
            row["fits"] = all(s.fits for s in estimate.stages)
        rows[name] = row
    planner_tps = timed["planner"].tokens_per_s
    best_tps = timed[best_name].tokens_per_s
    default_tps = timed["default"].tokens_per_s
    return {
        "model": {"layers": info.n_layers, "embd": info.n_embd, "quant": info.quant},
        "planner_tps": planner_tps,
        "default_tps": default_tps,
        "even_tps": timed["even"].tokens_per_s,
        "best_tps": best_tps,
        "best": best_name,
        "planner_vs_best": planner_tps / best_tps if best_tps else 0.0,
        "planner_vs_default": planner_tps / default_tps if default_tps else 0.0,
        "runs": rows,
    }


def print_result(result: dict[str, Any]) -> None:
    model = result["model"]
    print(
        f"synthetic model: {model['layers']} layers, width {model['embd']}, {model['quant']}; "
        f"bench took {result['elapsed_s']:.0f}s"
    )
    for name, row in result["runs"].items():
        split = row.get("summary") or f"llama.cpp default (realized {row['realized']})"
        predicted = row.get("predicted_tps")
        guess = f", predicted {predicted:.1f}" if predicted else ""
        print(f"  {name:<8} {row['tokens_per_s']:7.1f} tokens/s{guess}  {split}")
    print(
        f"planner {result['planner_tps']:.1f} tokens/s = {result['planner_vs_best']:.2f} of the "
        f"best ({result['best_tps']:.1f}), {result['planner_vs_default']:.2f}x llama.cpp's default"
    )
    sys.stdout.flush()
