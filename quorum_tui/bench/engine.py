"""`quorum bench engine`: Quorum's endpoint against llama-server started by hand, same split.

Four local workers: two serve `quorum serve` in a process of its own (the deployment API:
gateway in front of llama-server at debug log level), two serve the same llama-server binary
started directly with the equivalent flags (no gateway, llama.cpp's default log level). A
third server holds the whole model in one process, for scale, and a fourth the same with
`--no-repack`: the CPU kernels Quorum proved on this machine against the plain ones. All stay
up, and every measurement runs on each of them in turn, in rounds that rotate who goes first:

- single-stream decode: tokens/s of one streamed completion, from the median time between
  its tokens on the client's clock;
- time to first token of a prompt of about 1,000 tokens (nothing cached);
- aggregate tokens/s of 1, 2 and 4 clients at once (total tokens over the wall time).

Each ratio is the median of the rounds' own ratios, so load that changes between rounds does
not move it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from quorum_tui import paths
from quorum_tui.engine.cpucheck import cpu_verdict
from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.llama_server import ServerOptions, server_argv
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.plan import LayerPlan, even_counts
from quorum_tui.engine.settings import EngineSettings, cores
from quorum_tui.errors import QuorumError
from quorum_tui.models.registry import REAL_DEMO_MODEL
from quorum_tui.wire import sse_data, sse_events, sse_json

FALLBACK_MODEL = "synthetic:layers=24,embd=512,heads=8,dtype=q8_0"
CLIENTS = (1, 2, 4)
WORDS = (
    "river stone lantern harbor meadow copper signal window orchard thunder ribbon "
    "compass glacier saddle violet canyon ember falcon quarry velvet"
).split()


def register(sub: Any) -> None:
    p = sub.add_parser("engine", help="Quorum's endpoint vs llama-server by hand, same split")
    p.add_argument("--model", help=f"default: {REAL_DEMO_MODEL}, else a synthetic q8_0 model")
    p.add_argument("--split", help="layers per stage, coordinator first (default: thirds)")
    p.add_argument("-n", "--tokens", type=int, default=128, help="tokens per stream")
    p.add_argument("--prompt-tokens", type=int, default=1000, help="tokens of the long prompt")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="threads of each local worker (default 0: all cores, as the demo's workers)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_engine)


def cmd_bench_engine(args: argparse.Namespace) -> int:
    if args.tokens < 2 or args.rounds < 1:
        raise QuorumError("--tokens must be at least 2 and --rounds at least 1")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}: split {result['split']}, {result['threads']} coordinator thread(s)")
    print(
        f"single stream: Quorum {result['quorum_tps']:.1f} tokens/s, llama-server "
        f"{result['llama_server_tps']:.1f}, one process {result['single_tps']:.1f}; "
        f"ratio {result['ratio_tps']:.3f} (target >= 0.97)"
    )
    print(
        f"first token of a {result['long_prompt_tokens']}-token prompt: Quorum "
        f"{result['ttft_long_s']:.2f} s, llama-server {result['llama_server_ttft_long_s']:.2f} s, "
        f"one process {result['single_ttft_long_s']:.2f} s; ratio "
        f"{result['ratio_ttft_long']:.3f} (target <= 1.05)"
    )
    print(
        f"one process, {result['cpu_kernels']}: {result['single_tps']:.1f} tokens/s, with "
        f"--no-repack {result['single_no_repack_tps']:.1f}; ratio {result['ratio_repack']:.3f}"
    )
    agg = result["aggregate_tps"]
    hand = result["llama_server_aggregate_tps"]
    print(
        "clients at once (tokens/s in all): "
        + ", ".join(f"{k}: {agg[k]:.1f} (by hand {hand[k]:.1f})" for k in agg)
        + f"; 4 clients / 1 = {result['scaling_4']:.2f} (target >= 1.8)"
    )
    return 0


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    """Base URL, without /v1."""


def pick_model(spec: str | None) -> tuple[Path, str]:
    from quorum_tui.models.resolve import resolve_model

    if spec:
        return resolve_model(spec), spec
    try:
        return resolve_model(REAL_DEMO_MODEL), REAL_DEMO_MODEL
    except QuorumError:
        return resolve_model(FALLBACK_MODEL), FALLBACK_MODEL


def split_for(info: ModelInfo, text: str | None) -> list[int]:
    from quorum_tui.engine.plan import parse_split

    if text:
        return parse_split(text)
    thirds = even_counts(info.n_layers, 3)[1:]
    return [thirds[2], thirds[0], thirds[1]]


@dataclass
class Started:
    """A server process of the benchmark, the name it goes by and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def by_hand(argv: list[str], log: Path, name: str) -> Iterator[Started]:
    """llama-server started directly, as a user would, until the block ends."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield Started(name, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_healthy(url: str, server: Started, timeout: float = 120.0) -> None:
    """Until `url` answers /health; a server that exits meanwhile is reported at once."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            code = server.proc.poll()
            if code is not None:
                tail = server.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise QuorumError(describe_exit(server.name, code, server.log, tail))
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise QuorumError(f"{server.name} at {url} did not come up within {timeout:g}s")


def hand_argv(model: Path, plan: LayerPlan, options: ServerOptions) -> list[str]:
    """Quorum's coordinator command at llama.cpp's default log level (info)."""
    argv = server_argv(model, plan, options)
    at = argv.index("--log-verbosity")
    return [*argv[:at], *argv[at + 2 :]]


@dataclass
class Timed:
    """When one stream started and when each of its tokens arrived (the client's clock)."""

    started: float
    arrivals: list[float]

    @property
    def ttft_s(self) -> float:
        return self.arrivals[0] - self.started

    @property
    def tokens_per_s(self) -> float:
        """From the median time between tokens: a hiccup of the machine does not move it."""
        gaps = [b - a for a, b in itertools.pairwise(self.arrivals)]
        return 1.0 / statistics.median(gaps) if gaps else 0.0


async def stream(http: httpx.AsyncClient, url: str, prompt: str | list[int], tokens: int) -> Timed:
    """One timed stream; one that found its kept-alive connection closed before any answer
    (llama-server sometimes closes one after a streamed reply) is sent again."""
    try:
        return await _stream(http, url, prompt, tokens)
    except httpx.RemoteProtocolError as exc:
        if "without sending a response" not in str(exc):
            raise QuorumError(f"{url}: {exc}") from None
        return await _stream(http, url, prompt, tokens)


async def _stream(http: httpx.AsyncClient, url: str, prompt: str | list[int], tokens: int) -> Timed:
    body = {
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    timed = Timed(time.perf_counter(), [])
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise QuorumError(
                    f"{url} answered {response.status_code}: {await response.aread()!r}"
                )
            async for event in sse_events(response.aiter_bytes()):
                data = sse_json(sse_data(event) or b"")
                if data is not None and (data.get("choices") or [{}])[0].get("text"):
                    timed.arrivals.append(time.perf_counter())
    except httpx.RemoteProtocolError:
        raise
    except httpx.HTTPError as exc:
        raise QuorumError(f"{url}: {type(exc).__name__}: {exc}") from None
    if len(timed.arrivals) < tokens:
        raise QuorumError(f"{url} sent {len(timed.arrivals)} of {tokens} tokens")
    return timed


async def decode_tps(http: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> float:
    return (await stream(http, url, prompt, tokens)).tokens_per_s


async def ttft(http: httpx.AsyncClient, url: str, prompt: list[int]) -> float:
    return (await stream(http, url, prompt, 2)).ttft_s


async def aggregate(http: httpx.AsyncClient, url: str, clients: int, tokens: int) -> float:
    """Tokens of `clients` streams at once over the wall time from the first start."""
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(stream(http, url, f"Client {i} tells a story about the {WORDS[i]}", tokens)
          for i in range(clients))
    )  # fmt: skip
    end = max(run.arrivals[-1] for run in runs)
    return sum(len(run.arrivals) for run in runs) / (end - started)


async def long_prompt(http: httpx.AsyncClient, url: str, tokens: int) -> list[int]:
    """Exactly `tokens` token ids of varied text (llama-server takes ids as a prompt)."""
    text = " ".join(f"the {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}"
                    for i in range(tokens))  # fmt: skip
    reply = await http.post(f"{url}/tokenize", json={"content": text})
    ids = [int(t) for t in reply.json()["tokens"]]
    if len(ids) < tokens:
        raise QuorumError(f"the long prompt has only {len(ids)} tokens")
    return ids[:tokens]


@contextlib.contextmanager
def quorum_serve(
    path: Path, workers: list[str], counts: list[int], port: int, log: Path
) -> Iterator[Started]:
    """`quorum serve` in a process of its own, exactly as a user runs it."""
    argv = [sys.executable, "-m", "quorum_tui", "serve", str(path), "--port", str(port)]
    argv += ["--split", ",".join(map(str, counts))]
    for endpoint in workers:
        argv += ["--worker", endpoint]
    with by_hand(argv, log, "quorum serve") as started:
        yield started


@contextlib.asynccontextmanager
async def servers(
    path: Path, info: ModelInfo, counts: list[int], log_dir: Path, worker_threads: int
) -> AsyncIterator[tuple[list[Endpoint], int]]:
    """Quorum's endpoint, llama-server by hand and one process, all up at once."""
    cluster = LocalCluster(log_dir)
    await asyncio.to_thread(cluster.start, 4, worker_threads)
    ours, theirs = cluster.refs[:2], cluster.refs[2:]
    settings = EngineSettings()
    threads = settings.coordinator_threads(local_workers=2)
    options = ServerOptions(
        port=free_port(), ctx=settings.ctx, slots=settings.slots, threads=threads, alias=path.name
    )
    hand_plan = LayerPlan.from_counts(info.n_layers, counts, theirs)
    alone = ServerOptions(port=free_port(), ctx=settings.ctx, slots=settings.slots, threads=cores())
    plain = replace(alone, port=free_port(), repack=False)
    single = LayerPlan.from_counts(info.n_layers, [info.n_layers], [])
    port = free_port()
    try:
        with (
            quorum_serve(
                path, [w.endpoint for w in ours], counts, port, log_dir / "quorum.log"
            ) as quorum,
            by_hand(
                hand_argv(path, hand_plan, options), log_dir / "by-hand.log", "llama-server"
            ) as hand,
            by_hand(
                hand_argv(path, single, alone), log_dir / "one-process.log", "one process"
            ) as one,
            by_hand(
                hand_argv(path, single, plain), log_dir / "no-repack.log", "--no-repack"
            ) as no_repack,
        ):
            started = {
                Endpoint("quorum", f"http://127.0.0.1:{port}"): quorum,
                Endpoint("by_hand", f"http://127.0.0.1:{options.port}"): hand,
                Endpoint("single", f"http://127.0.0.1:{alone.port}"): one,
                Endpoint("no_repack", f"http://127.0.0.1:{plain.port}"): no_repack,
            }
            for endpoint, server in started.items():
                await wait_healthy(endpoint.url, server)
            yield list(started), threads
    finally:
        await asyncio.to_thread(cluster.stop)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path, name = await asyncio.to_thread(pick_model, args.model)
    info = await asyncio.to_thread(inspect_model, path)
    counts = split_for(info, args.split)
    log_dir = paths.ensure(paths.data_dir() / "logs" / f"bench-engine-{time.strftime('%H%M%S')}")
    prompt = "Once upon a time, in a quiet harbor town,"
    rounds: list[dict[str, Any]] = []
    async with (
        servers(path, info, counts, log_dir, args.worker_threads) as (endpoints, threads),
        httpx.AsyncClient(
            timeout=httpx.Timeout(600.0, connect=10.0),
            limits=httpx.Limits(keepalive_expiry=1.0),
        ) as http,
    ):
        long = await long_prompt(http, endpoints[0].url, args.prompt_tokens)
        for r in range(args.rounds):
            turn = r % len(endpoints)
            order = endpoints[turn:] + endpoints[:turn]
            row: dict[str, Any] = {"order": [e.name for e in order]}
            for e in order:
                row[f"{e.name}_tps"] = await decode_tps(http, e.url, prompt, args.tokens)
                row[f"{e.name}_ttft_long_s"] = await ttft(http, e.url, long)
            for e in order:
                if e.name in ("single", "no_repack"):
                    continue
                row[f"{e.name}_aggregate"] = {
                    str(k): await aggregate(http, e.url, k, args.tokens) for k in CLIENTS
                }
            rounds.append(row)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def agg(name: str) -> dict[str, float]:
        return {str(k): statistics.median(r[f"{name}_aggregate"][str(k)] for r in rounds)
                for k in CLIENTS}  # fmt: skip

    return {
        "model": name,
        "path": str(path),
        "split": ",".join(map(str, counts)),
        "threads": threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "long_prompt_tokens": len(long),
        "quorum_tps": median("quorum_tps"),
        "llama_server_tps": median("by_hand_tps"),
        "single_tps": median("single_tps"),
        "single_no_repack_tps": median("no_repack_tps"),
        "ratio_repack": statistics.median(r["single_tps"] / r["no_repack_tps"] for r in rounds),
        "cpu_kernels": cpu_verdict().summary(),
        "ratio_tps": statistics.median(r["quorum_tps"] / r["by_hand_tps"] for r in rounds),
        "ttft_long_s": median("quorum_ttft_long_s"),
        "llama_server_ttft_long_s": median("by_hand_ttft_long_s"),
        "single_ttft_long_s": median("single_ttft_long_s"),
        "ratio_ttft_long": statistics.median(
            r["quorum_ttft_long_s"] / r["by_hand_ttft_long_s"] for r in rounds
        ),
        "aggregate_tps": agg("quorum"),
        "llama_server_aggregate_tps": agg("by_hand"),
        "scaling_4": statistics.median(
            r["quorum_aggregate"]["4"] / r["quorum_aggregate"]["1"] for r in rounds
        ),
        "per_round": rounds,
        "logs": str(log_dir),
    }
