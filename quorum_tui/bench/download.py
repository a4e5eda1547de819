"""`quorum bench download`: Quorum's downloader against a plain streaming copy of the same bytes.

A local HTTP server (a child process, so that it does not share this process's GIL) serves one
file of random bytes. In interleaved rounds, a plain httpx stream-to-file copy and Quorum's
Downloader (`.part` file, sha256 on a thread, progress events, rename into place) fetch it;
the ratio of their best throughputs (and the median of the per-round ratios, the order
alternating each round) is the overhead of everything Quorum adds. The best of several runs is
the figure least disturbed by other load on the machine. CPU seconds of this process (the server
is a child) show what the checksum costs whatever the load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from quorum_tui.engine.localcluster import free_port
from quorum_tui.errors import QuorumError
from quorum_tui.models.download import Downloader, Progress, Target
from quorum_tui.units import human_rate

TARGET_RATIO = 0.8

_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

path, port = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        view = memoryview(data)
        for i in range(0, len(view), 1 << 20):
            self.wfile.write(view[i : i + (1 << 20)])

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def register(sub: Any) -> None:
    p = sub.add_parser("download", help="Quorum's downloader vs a plain streaming copy")
    p.add_argument("--json", action="store_true")
    p.add_argument("--size", type=int, default=128, help="MiB served")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.set_defaults(func=cmd_bench_download)


def cmd_bench_download(args: argparse.Namespace) -> int:
    if args.size < 1 or args.rounds < 1:
        raise QuorumError("--size and --rounds must be at least 1")
    result = bench(args.size << 20, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['bytes'] >> 20} MiB from a local server, {result['rounds']} interleaved rounds")
    for name in ("plain", "quorum"):
        row = result[name]
        runs = ", ".join(human_rate(r) for r in row["rates"])
        print(
            f"  {name:<7} best {human_rate(row['best']):>12}  "
            f"median {human_rate(row['median']):>12}  CPU {row['cpu_s']:.2f} s  ({runs})"
        )
    verdict = "meets" if result["ratio"] >= TARGET_RATIO else "MISSES"
    print(
        f"ratio quorum/plain, median of the paired rounds: {result['ratio']:.2f} "
        f"({verdict} the {TARGET_RATIO} target); best against best: {result['ratio_best']:.2f}"
    )
    return 0


def bench(size: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quorum-bench-download-") as tmp:
        root = Path(tmp)
        source = root / "source.bin"
        data = os.urandom(size)
        source.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        del data
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(source), str(port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != b"ready":
                raise QuorumError("the benchmark's HTTP server did not start")
            url = f"http://127.0.0.1:{port}/source.bin"
            rates: dict[str, list[float]] = {"plain": [], "quorum": []}
            cpu: dict[str, list[float]] = {"plain": [], "quorum": []}
            for index in range(rounds):
                order = ("plain", "quorum") if index % 2 == 0 else ("quorum", "plain")
                for name in order:
                    dest = root / f"{name}-{index}"
                    started = time.process_time()
                    rate = (
                        plain_copy(url, dest, size)
                        if name == "plain"
                        else quorum_copy(url, dest, size, digest)
                    )
                    rates[name].append(rate)
                    cpu[name].append(time.process_time() - started)
        finally:
            server.terminate()
            server.wait(timeout=10)
    paired = [q / p for p, q in zip(rates["plain"], rates["quorum"], strict=True)]
    return {
        "bytes": size,
        "rounds": rounds,
        **{
            name: {
                "rates": r,
                "median": statistics.median(r),
                "best": max(r),
                "cpu_s": statistics.median(cpu[name]),
            }
            for name, r in rates.items()
        },
        "ratio": statistics.median(paired),
        "ratio_best": max(rates["quorum"]) / max(rates["plain"]),
        "target": TARGET_RATIO,
    }


def plain_copy(url: str, dest: Path, size: int) -> float:
    """Bytes per second of a bare httpx stream written to a file."""
    start = time.perf_counter()
    with httpx.Client() as client, client.stream("GET", url) as response, dest.open("wb") as f:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            f.write(chunk)
    elapsed = time.perf_counter() - start
    if dest.stat().st_size != size:
        raise QuorumError(f"the plain copy got {dest.stat().st_size} bytes, not {size}")
    dest.unlink()
    return size / elapsed


def quorum_copy(url: str, dest: Path, size: int, digest: str) -> float:
    """Bytes per second of Downloader.fetch, checksum and progress events included."""
    events: list[Progress] = []
    start = time.perf_counter()
    with Downloader(on_progress=events.append) as downloader:
        downloader.fetch(Target(url, dest, dest.name, size, digest))
    elapsed = time.perf_counter() - start
    if events[-1].phase != "done":
        raise QuorumError("the download finished without its done event")
    dest.unlink()
    return size / elapsed
