"""`quorum bench chaos`: clients keep asking while workers die and come back.

Three local workers serve `quorum serve` (a process of its own, exactly as a user runs it, with
`--rejoin-after 2`). First every distinct request is sent alone, for its reference reply. Then
`--clients` clients each send `--requests` greedy streamed requests, one after another, while a
random worker is SIGKILLed every few seconds and restarted on its port a moment later, until
`--kills` kills. Every reply must either complete with the reference text or fail visibly (an
error event, or no `[DONE]`); one that looks complete but is short or different is `silent`,
and must not happen. The pauses a client saw (the longest gap between two tokens of a reply that
lived through a failover) are reported, and whether `quorum serve` still serves at the end.

The coordinator runs with `--no-repack` and the workers' thread count, so that a layer computes
the same wherever a failover moves it (greedy replies are equal across plans).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quorum_tui import paths
from quorum_tui.bench.engine import Started, by_hand, pick_model, wait_healthy
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import even_counts
from quorum_tui.engine.settings import cores
from quorum_tui.errors import QuorumError
from quorum_tui.wire import DONE, failovers_of, sse_data, sse_events, sse_json

SUBJECTS = (
    "a lighthouse keeper", "a lost violin", "the first snow", "a clockmaker's apprentice",
    "an old map", "a river that ran uphill", "the night market", "a paper boat",
    "a quiet robot", "the last train home", "a garden on the moon", "a borrowed umbrella",
)  # fmt: skip
TOKENS = 48


def register(sub: Any) -> None:
    p = sub.add_parser("chaos", help="clients keep asking while workers die and come back")
    p.add_argument("--model", help="default: smollm2-135m, else a synthetic q8_0 model")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=10, help="requests per client")
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--every", type=float, default=3.0, help="seconds between kills")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_chaos)


def cmd_bench_chaos(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.requests < 1 or args.kills < 0:
        raise QuorumError("--clients and --requests must be at least 1, --kills at least 0")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pauses = result["pauses_s"]
    print(
        f"{result['requests']} requests, {result['kills']} kills: {result['completed']} "
        f"completed ({result['identical']} identical to the reply alone), "
        f"{result['failed_visibly']} failed visibly, {result['silent']} silent (must be 0); "
        f"longest pause {max(pauses, default=0.0):.2f} s; quorum serve "
        f"{'still serving' if result['serve_alive'] else 'GONE'}"
    )
    return 0 if result["silent"] == 0 and result["serve_alive"] else 1


@dataclass
class Outcome:
    """One reply as its client saw it."""

    text: str = ""
    done: bool = False
    error: str = ""
    failovers: int = 0
    gaps: list[float] = field(default_factory=list)


async def ask(http: httpx.AsyncClient, url: str, prompt: str) -> Outcome:
    body = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    out = Outcome()
    last = time.perf_counter()
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                out.error = f"status {response.status_code}"
                return out
            async for event in sse_events(response.aiter_bytes()):
                data = sse_data(event)
                if data == DONE:
                    out.done = True
                    continue
                payload = sse_json(data or b"")
                if payload is None:
                    continue
                if "error" in payload:
                    out.error = str(payload["error"].get("message", payload["error"]))
                    continue
                out.failovers = max(out.failovers, len(failovers_of(payload)))
                piece = (payload.get("choices") or [{}])[0].get("text") or ""
                if piece:
                    now = time.perf_counter()
                    out.gaps.append(now - last)
                    last = now
                    out.text += piece
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def chaos_monkey(cluster: LocalCluster, kills: int, every: float, rng: random.Random) -> int:
    """SIGKILL a random worker every `every` s and restart it on its port a moment later."""
    done = 0
    while done < kills:
        await asyncio.sleep(every)
        victim = rng.choice(cluster.workers)
        victim.kill(signal.SIGKILL)
        done += 1
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await asyncio.to_thread(cluster.restart, victim)
    return done


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path, name = await asyncio.to_thread(pick_model, args.model)
    info = await asyncio.to_thread(inspect_model, path)
    rng = random.Random(args.seed)
    log_dir = paths.ensure(paths.data_dir() / "logs" / f"bench-chaos-{time.strftime('%H%M%S')}")
    cluster = LocalCluster(log_dir)
    await asyncio.to_thread(cluster.start, 3)
    port = free_port()
    counts = even_counts(info.n_layers, 3)
    argv = [sys.executable, "-m", "quorum_tui", "serve", str(path), "--port", str(port)]
    argv += ["--split", ",".join(map(str, counts)), "--rejoin-after", "2", "--no-repack"]
    argv += ["--threads", str(cores())]
    for worker in cluster.workers:
        argv += ["--worker", worker.endpoint]
    url = f"http://127.0.0.1:{port}"
    prompts = [f"Tell a short story about {SUBJECTS[i % len(SUBJECTS)]}." for i in range(12)]
    prompts = prompts[: args.requests]
    try:
        with by_hand(argv, log_dir / "serve.log", "quorum serve") as serve:
            await wait_healthy(url, serve)
            async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as http:
                alone = {p: (await ask(http, url, p)) for p in prompts}
                bad = [p for p, o in alone.items() if not o.done or o.error]
                if bad:
                    raise QuorumError(f"the reference replies failed: {alone[bad[0]].error}")
                short = [p for p, o in alone.items() if len(o.gaps) < TOKENS]
                if short:
                    raise QuorumError(f"the reference reply to {short[0]!r} is short")

                async def client(index: int) -> list[tuple[str, Outcome]]:
                    order = prompts[index:] + prompts[:index]
                    asked = [order[i % len(order)] for i in range(args.requests)]
                    return [(p, await ask(http, url, p)) for p in asked]

                monkey = asyncio.create_task(chaos_monkey(cluster, args.kills, args.every, rng))
                replies = await asyncio.gather(*(client(i) for i in range(args.clients)))
                kills = await monkey
                alive = await _still_serving(http, url, prompts[0], alone[prompts[0]].text, serve)
            every = [r for c in replies for r in c]
            return _report(name, args, alone, every, kills, alive, log_dir)
    finally:
        await asyncio.to_thread(cluster.stop)


async def _still_serving(
    http: httpx.AsyncClient, url: str, prompt: str, text: str, serve: Started
) -> bool:
    """`quorum serve` runs, and a last request gets the reference reply."""
    if serve.proc.poll() is not None:
        return False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last = await ask(http, url, prompt)
        if last.done and not last.error:
            return last.text == text
        await asyncio.sleep(1.0)
    return False


def _report(
    name: str,
    args: argparse.Namespace,
    alone: dict[str, Outcome],
    replies: list[tuple[str, Outcome]],
    kills: int,
    alive: bool,
    log_dir: Path,
) -> dict[str, Any]:
    completed = [(p, o) for p, o in replies if o.done and not o.error]
    identical = [(p, o) for p, o in completed if o.text == alone[p].text]
    return {
        "model": name,
        "clients": args.clients,
        "requests": len(replies),
        "completed": len(completed),
        "identical": len(identical),
        "failed_visibly": len(replies) - len(completed),
        "silent": len(completed) - len(identical),
        "kills": kills,
        "failovers_lived": sum(1 for _, o in completed if o.failovers),
        "serve_alive": alive,
        "pauses_s": sorted(max(o.gaps) for _, o in replies if o.failovers and o.gaps),
        "errors": sorted({o.error for _, o in replies if o.error}),
        "logs": str(log_dir),
    }
