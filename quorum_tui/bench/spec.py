"""`quorum bench spec`: plain decoding against speculative decoding, same split, same workers.

The workers are the cluster file's hosts or `--lab N` namespace hosts whose links have a delay
(1 ms each way by default, a LAN's round trip of about 2 ms rather than loopback's 20 µs). In
each round every mode gets its own coordinator through the deployment API (a worker serves one
client at a time) and answers both workloads, greedily:

1. a rewrite: repeat a given paragraph with one word changed, the repetition that editors
   and coding tools send, where n-grams of the prompt predict most of the reply;
2. free generation, where they predict little.

For each mode and workload: tokens/s (llama-server's decode timing), the share of drafted
tokens accepted, tokens per pass through the pipeline (tokens over llama_decode calls, from
/metrics), and whether the text equals plain decoding's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, replace
from typing import Any

import httpx

from quorum_tui.bench.hosts import add_host_args, run_on_hosts
from quorum_tui.chat.session import SYSTEM_PROMPT
from quorum_tui.cluster.bringup import BringUpOptions
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.deploy.deployment import Deployment, Target
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.engine.plan import parse_split
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError
from quorum_tui.models.registry import REAL_DEMO_MODEL
from quorum_tui.wire import parse_metrics

PARAGRAPH = (
    "The quorum of workers met on Tuesday to split the model into layers. Each worker took a "
    "contiguous range of layers, and the coordinator drove every token through the ranges in "
    "order. When one worker was slow, the others waited, so the plan gave it fewer layers. "
    "The network between them was a small switch in a cupboard, and every token crossed it "
    "twice for each worker: once with the activations going out and once with the results "
    "coming back. On Tuesday afternoon a worker rebooted, and its layers moved to its "
    "neighbour until it came back. By the end of Tuesday the whole model answered questions "
    "in a few seconds, and nobody had to log in to any machine by hand."
)
WORKLOADS = {
    "rewrite": (
        'Repeat this paragraph word for word, but replace "Tuesday" with "Friday":\n\n' + PARAGRAPH
    ),
    "free": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}


def register(sub: Any) -> None:
    p = sub.add_parser("spec", help="plain vs speculative decoding over delayed links")
    add_host_args(p, default_lab=2, default_delay_ms=1.0)
    p.add_argument("--model", default=REAL_DEMO_MODEL)
    p.add_argument("--draft", metavar="MODEL", help="also time draft-model speculation")
    p.add_argument("--split", help="layers per stage, coordinator first (default: even)")
    p.add_argument("-n", "--tokens", type=int, default=256, help="tokens per reply at most")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--accept-new-host-keys", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_spec)


def cmd_bench_spec(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.tokens < 8:
        raise QuorumError("--rounds must be at least 1 and --tokens at least 8")
    result = run_on_hosts(args, bench)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} over {result['workers']} worker(s): {result['plan']}")
    for row in result["table"]:
        print(
            f"  {row['mode']:<6} {row['workload']:<8} {row['tokens_per_s']:7.1f} tokens/s  "
            f"acceptance {_pct(row['acceptance'])}  {row['tokens_per_pass']:.2f} tokens/pass  "
            f"{'same text as plain' if row['identical'] else 'TEXT DIFFERS from plain'}"
        )
    print(
        f"rewrite: plain {result['plain_tps']:.1f} tokens/s, best speculation "
        f"({result['spec_mode']}) {result['spec_tps']:.1f}: ratio {result['ratio']:.2f} "
        f"(target >= 1.5), identical text: {result['identical']}"
    )
    return 0


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.0%}"


@dataclass
class Reply:
    text: str
    tokens: int
    tokens_per_s: float
    passes: float
    drafted: float
    accepted: float


async def ask(http: httpx.AsyncClient, base: str, prompt: str, tokens: int) -> Reply:
    """One greedy chat reply, with the decode calls and draft counts it took (/metrics)."""
    before = parse_metrics((await http.get(f"{base}/metrics")).text)
    body = {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": tokens,
        "temperature": 0,
        "cache_prompt": False,
    }
    reply = await http.post(f"{base}/v1/chat/completions", json=body)
    if reply.status_code != 200:
        raise QuorumError(f"the coordinator answered {reply.status_code}: {reply.text[:200]}")
    data = reply.json()
    after = parse_metrics((await http.get(f"{base}/metrics")).text)

    def delta(name: str) -> float:
        return after.values.get(name, 0.0) - before.values.get(name, 0.0)

    timings = data.get("timings", {})
    return Reply(
        text=data["choices"][0]["message"]["content"],
        tokens=int(timings.get("predicted_n", 0)),
        tokens_per_s=float(timings.get("predicted_per_second", 0.0)),
        passes=delta("n_decode_total"),
        drafted=delta("spec_decode_num_draft_tokens_total"),
        accepted=delta("spec_decode_num_accepted_tokens_total"),
    )


async def bench(inv: Inventory, args: argparse.Namespace) -> dict[str, Any]:
    modes = ["plain", "ngram", *(["draft"] if args.draft else [])]
    options = BringUpOptions(accept_new_host_keys=args.accept_new_host_keys)
    target = Target(cluster_file=inv.path, bring_up=options)
    split = tuple(parse_split(args.split)) if args.split else None
    replies: dict[tuple[str, str], list[Reply]] = {}
    async with (
        Deployment(target) as deployment,
        httpx.AsyncClient(timeout=httpx.Timeout(900.0, connect=10.0)) as http,
    ):
        prepared = await deployment.prepare(args.model, PlanRequest(split))
        base_settings = EngineSettings(slots=1, draft=args.draft, server_args=("--metrics",))
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                spec = "off" if mode == "plain" else mode
                deployment.settings = replace(base_settings, spec=spec)
                base = await deployment.start(prepared)
                for workload, prompt in WORKLOADS.items():
                    reply = await ask(http, base, prompt, args.tokens)
                    replies.setdefault((mode, workload), []).append(reply)
        await deployment.stop_coordinator()
    table: list[dict[str, Any]] = []
    for (mode, workload), runs in replies.items():
        plain = replies[("plain", workload)][0].text
        drafted = sum(r.drafted for r in runs)
        table.append(
            {
                "mode": mode,
                "workload": workload,
                "tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
                "acceptance": sum(r.accepted for r in runs) / drafted if drafted else None,
                "tokens_per_pass": sum(r.tokens for r in runs)
                / max(sum(r.passes for r in runs), 1),
                "tokens": runs[0].tokens,
                "identical": all(r.text == plain for r in runs),
                "runs_tokens_per_s": [r.tokens_per_s for r in runs],
            }
        )
    table.sort(key=lambda row: (row["workload"] != "rewrite", modes.index(row["mode"])))
    rewrite = {row["mode"]: row for row in table if row["workload"] == "rewrite"}
    best = max((m for m in modes if m != "plain"), key=lambda m: rewrite[m]["tokens_per_s"])
    plain_tps = rewrite["plain"]["tokens_per_s"]
    return {
        "model": args.model,
        "plan": prepared.plan.summary(),
        "workers": len(prepared.plan.workers),
        "delay_ms": getattr(args, "delay_ms", None),
        "rounds": args.rounds,
        "plain_tps": plain_tps,
        "spec_tps": rewrite[best]["tokens_per_s"],
        "spec_mode": best,
        "ratio": rewrite[best]["tokens_per_s"] / plain_tps if plain_tps else 0.0,
        "acceptance": rewrite[best]["acceptance"],
        "identical": rewrite[best]["identical"],
        "table": table,
    }
