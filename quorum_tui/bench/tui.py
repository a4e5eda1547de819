"""`quorum bench tui`: a synthetic token stream into the Chat pane; event-loop lag and token rate.

A token server in a child process (so its pacing does not share our event loop) speaks the
OpenAI streaming format at a fixed rate. The Chat pane runs headless in a real Textual app and
streams each reply through its normal path (httpx, MarkdownPieces, anchored scroll). A timer on
the app's event loop records its own lateness. Measured side by side in one run: the idle loop,
the target rate (2,000 tokens/s by default) and an unpaced stream (as fast as the pane reads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quorum_tui.errors import QuorumError

TICK_S = 0.01
TARGET_P99_MS = 50.0
SAMPLE = """## How a layer plan runs

The coordinator sends every token through the stages in order. Each worker holds a contiguous \
range of layers, and the network round trip is paid once per stage, so a plan with fewer stages \
is faster when the model fits. Memory decides the split; the network decides the price.

- the coordinator keeps the embeddings and the first layers
- each worker takes the next contiguous range
- the last stage also computes the output layer

To start a worker on another machine:

```sh
quorum worker --host 0.0.0.0 --port 50052 --threads 8
```

Then apply the plan on the Layers screen. The realized assignment is read back from \
llama.cpp's own log and compared with the plan, and **any difference is an error**.

"""
"""One screen of typical reply Markdown: the stream repeats it, cut into token-sized pieces."""


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="event-loop lag of the Chat pane under a fast token stream")
    p.add_argument("--json", action="store_true")
    p.add_argument("--rate", type=int, default=2000, help="tokens per second offered")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each stream")
    p.set_defaults(func=cmd_bench_tui)


def cmd_bench_tui(args: argparse.Namespace) -> int:
    if args.rate < 1 or not 0.5 <= args.seconds <= 60:
        raise QuorumError("--rate must be positive and --seconds between 0.5 and 60")
    result = asyncio.run(bench(args.rate, args.seconds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)
    return 0


@dataclass
class Phase:
    """One measured stretch: what was offered, what the pane took in, and the loop's lag."""

    name: str
    offered_rate: float | None
    tokens: int
    received_rate: float | None
    shown_rate: float | None
    drain_ms: float | None
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    samples: int
    cpu_percent: float
    """CPU time of this process over wall time in the phase (100 = one core busy)."""


class LagProbe:
    """A timer on the event loop that records how late each of its ticks fires."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            self.samples.append(max(0.0, time.perf_counter() - due))

    def take(self) -> list[float]:
        taken, self.samples = self.samples, []
        return taken

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lag_stats(samples: list[float]) -> dict[str, float]:
    return {
        "lag_p50_ms": percentile(samples, 0.50) * 1000,
        "lag_p99_ms": percentile(samples, 0.99) * 1000,
        "lag_max_ms": max(samples, default=0.0) * 1000,
    }


@contextlib.contextmanager
def token_server() -> Iterator[str]:
    """The token server in a child process; yields its OpenAI-compatible base URL."""
    from quorum_tui.engine.localcluster import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui.bench.tui", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise QuorumError("the benchmark's token server did not start")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(10)


async def bench(rate: int, seconds: float) -> dict[str, Any]:
    with token_server() as url:
        phases = await drive_pane(url, rate, seconds)
    target = next(p for p in phases if p.offered_rate == rate)
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "target_rate": rate,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": target.lag_p99_ms < TARGET_P99_MS and keeps_up(target),
        "phases": [asdict(p) for p in phases],
    }


def keeps_up(phase: Phase) -> bool:
    """The pane took the tokens in at (nearly) the rate they were offered."""
    if phase.offered_rate is None or phase.shown_rate is None:
        return False
    return phase.shown_rate >= 0.95 * phase.offered_rate


async def drive_pane(url: str, rate: int, seconds: float) -> list[Phase]:
    from quorum_tui.chat.store import ConversationStore
    from quorum_tui.tui.benchhost import ChatBenchApp
    from quorum_tui.tui.chat import ChatPane

    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="quorum-bench-tui-") as tmp:
        app = ChatBenchApp(ConversationStore(Path(tmp) / "bench.sqlite3"))
        async with app.run_test(headless=True, size=(120, 40)) as pilot:
            pane = app.query_one(ChatPane)
            pane.set_endpoint(url, "bench: synthetic token stream")
            await asyncio.wait_for(app.settled.wait(), 30)
            probe = LagProbe()
            probe.start()
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds / 2)
            idle = probe.take()
            busy = 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)
            stretch = lag_stats(idle)
            phases.append(
                Phase(
                    "idle",
                    None,
                    0,
                    None,
                    None,
                    None,
                    **stretch,
                    samples=len(idle),
                    cpu_percent=busy,
                )
            )
            for name, offered in (("target", rate), ("unpaced", 0)):
                tokens = int(rate * seconds)
                pane.max_tokens = tokens
                pane.request_options = {"bench_rate": offered}
                await pane.action_new_conversation()
                await pilot.pause()
                probe.take()
                cpu, wall = time.process_time(), time.perf_counter()
                await pane.send(f"stream {tokens} tokens")
                event = await asyncio.wait_for(app.finished.get(), seconds * 20 + 30)
                done_at = time.perf_counter()
                busy = 100 * (time.process_time() - cpu) / (done_at - wall)
                samples = probe.take()
                if event.error:
                    raise QuorumError(f"the benchmark stream failed: {event.error}")
                stats = pane.reply.stats if pane.reply else None
                first = stats.first_token_at if stats else None
                last = stats.last_token_at if stats else None
                tokens = event.message.tokens or 0
                phases.append(
                    Phase(
                        name,
                        float(offered) if offered else None,
                        tokens,
                        event.message.tokens_per_s,
                        tokens / (done_at - first) if first else None,
                        (done_at - last) * 1000 if last else None,
                        **lag_stats(samples),
                        samples=len(samples),
                        cpu_percent=busy,
                    )
                )
            probe.stop()
    return phases


def print_result(result: dict[str, Any]) -> None:
    print(f"Chat pane under a synthetic token stream (target p99 lag < {TARGET_P99_MS:g} ms)")
    head = ("phase", "offered", "tokens", "received", "shown", "drain", "CPU")
    print(
        f"{head[0]:<8}" + "".join(f"{h:>10}" for h in head[1:]) + "   lag p50   lag p99   lag max"
    )
    for p in result["phases"]:
        offered = f"{p['offered_rate']:.0f}/s" if p["offered_rate"] else "-"
        taken = f"{p['received_rate']:.0f}/s" if p["received_rate"] else "-"
        shown = f"{p['shown_rate']:.0f}/s" if p["shown_rate"] else "-"
        drain = f"{p['drain_ms']:.0f} ms" if p["drain_ms"] is not None else "-"
        lags = " ".join(f"{p[k]:>6.1f} ms" for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms"))
        cpu = f"{p['cpu_percent']:.0f}%"
        cells = (offered, str(p["tokens"]), taken, shown, drain, cpu)
        print(f"{p['name']:<8}" + "".join(f"{c:>10}" for c in cells) + f" {lags}")
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    print(f"load average {load} on {result['cpus']} CPUs (other processes share them)")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"{verdict} the target at {result['target_rate']} tokens/s")


# The token server (run as `python -m quorum_tui.bench.tui --port P` by the benchmark).


def sample_tokens() -> list[str]:
    """SAMPLE cut like a tokenizer would: words with their leading space, newlines apart."""
    return re.findall(r" ?[^\s]{1,6}|\n", SAMPLE.replace("\\\n", ""))


def sse_chunk(text: str) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
            "finish_reason": None}]}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    request = json.loads(await reader.readexactly(length)) if length else {}
    tokens = int(request.get("max_tokens") or 100)
    pieces = sample_tokens()
    rate = float(request.get("bench_rate") or 0)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    started = time.perf_counter()
    sent = 0
    while sent < tokens:
        due = tokens if rate <= 0 else min(tokens, int((time.perf_counter() - started) * rate) + 1)
        writer.write(b"".join(sse_chunk(pieces[i % len(pieces)]) for i in range(sent, due)))
        sent = due
        await writer.drain()
        await asyncio.sleep(0.001 if rate > 0 else 0)
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()
    writer.close()


async def serve_tokens(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the token server of `quorum bench tui`")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_tokens(parser.parse_args().port))
