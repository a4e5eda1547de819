"""`quorum bench failover`: how long a reply pauses when a worker dies mid-stream.

Three local workers serve the model through the deployment API; a greedy stream runs, and
after `--at` tokens one worker is killed. Measured from the kill: the time until the next
token reaches the client (the pause the user sees), and, inside it, the new coordinator's load
time and the regeneration of the tokens already sent. The target is a pause no longer than the
reload plus 2 s. The reply's text is compared with an undisturbed run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
from typing import Any

import httpx

from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.deploy.events import DeployEvent, FailedOver
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import LayerPlan, even_counts
from quorum_tui.engine.supervisor import Loaded
from quorum_tui.errors import QuorumError
from quorum_tui.models.registry import REAL_DEMO_MODEL
from quorum_tui.models.resolve import resolve_model
from quorum_tui.wire import sse_data, sse_events, sse_json

PROMPT = "The history of the lighthouse begins"


def register(sub: Any) -> None:
    p = sub.add_parser("failover", help="the pause of a reply when a worker dies mid-stream")
    p.add_argument("--model", default=REAL_DEMO_MODEL)
    p.add_argument("-n", "--tokens", type=int, default=160)
    p.add_argument("--at", type=int, default=40, help="tokens streamed before the kill")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_failover)


def cmd_bench_failover(args: argparse.Namespace) -> int:
    if not 0 < args.at < args.tokens or args.rounds < 1:
        raise QuorumError("give 0 < --at < --tokens and --rounds of at least 1")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['model']}, a worker killed after {args.at} of {args.tokens} tokens, "
        f"{args.rounds} round(s): the reply paused {result['pause_s']:.2f} s (median), the "
        f"new coordinator loaded in {result['reload_s']:.2f} s; target: pause <= reload + 2 s "
        f"({'met' if result['target_met'] else 'NOT met'}); identical text: "
        f"{result['identical']}"
    )
    return 0


async def timed_stream(
    http: httpx.AsyncClient, base: str, tokens: int, at: int, kill: Any
) -> tuple[str, float]:
    """The reply's text, and the seconds from the kill to the next piece of text."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    text, pieces, killed, pause = [], 0, 0.0, 0.0
    async with http.stream("POST", f"{base}/v1/completions", json=body) as response:
        async for event in sse_events(response.aiter_bytes()):
            data = sse_json(sse_data(event) or b"")
            if data is None:
                continue
            if "error" in data:
                raise QuorumError(f"the reply broke off: {data['error']['message']}")
            piece = data["choices"][0].get("text") or ""
            if not piece:
                continue
            text.append(piece)
            pieces += 1
            if killed and not pause:
                pause = time.perf_counter() - killed
            if kill is not None and pieces == at:
                kill()
                killed = time.perf_counter()
    return "".join(text), pause


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path = await asyncio.to_thread(resolve_model, args.model)
    info = await asyncio.to_thread(inspect_model, path)
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        seen: list[DeployEvent] = []
        async with (
            Deployment(Target(local_workers=3), on_event=seen.append) as deployment,
            httpx.AsyncClient(timeout=600) as http,
        ):
            await deployment.connect_workers()
            plan = LayerPlan.from_counts(
                info.n_layers, even_counts(info.n_layers, 3), deployment.workers
            )
            base = await deployment.start(Prepared(path, info, plan))
            undisturbed, _ = await timed_stream(http, base, args.tokens, args.at, None)
            local = deployment.pool.local
            assert local is not None
            victim = local.workers[1]
            text, pause = await timed_stream(
                http, base, args.tokens, args.at, lambda v=victim: v.kill(signal.SIGKILL)
            )
        loads = [e.load_s for e in seen if isinstance(e, Loaded)]
        failed = [e for e in seen if isinstance(e, FailedOver)]
        rounds.append(
            {
                "pause_s": pause,
                "reload_s": loads[-1],
                "failover_s": failed[0].seconds if failed else None,
                "identical": text == undisturbed,
            }
        )
    pause_s = statistics.median(r["pause_s"] for r in rounds)
    reload_s = statistics.median(r["reload_s"] for r in rounds)
    return {
        "model": args.model,
        "tokens": args.tokens,
        "at": args.at,
        "pause_s": pause_s,
        "reload_s": reload_s,
        "target_met": pause_s <= reload_s + 2.0,
        "identical": all(r["identical"] for r in rounds),
        "per_round": rounds,
    }
