"""`quorum doctor`: what this machine runs of llama.cpp, and the proof of it."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from quorum_tui.cluster.shipped import glibc_version, llama_archive
from quorum_tui.engine.cpucheck import cpu_verdict
from quorum_tui.engine.llama_server import server_binary
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.units import human_bytes

FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
         "amx_int8", "asimd", "sve")  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="the llama.cpp build, the CPU kernels this machine proved, the runtime"
    )
    p.add_argument(
        "--recheck", action="store_true", help="prove every CPU backend again (a few seconds)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def cpu_facts() -> tuple[str, list[str]]:
    """This CPU's model name and the instruction-set flags that choose llama.cpp's kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags = set(value.split())
            break
    return model, [f for f in FLAGS if f in flags]


def cmd_doctor(args: argparse.Namespace) -> int:
    build = LlamaBuild.installed()
    verdict = cpu_verdict(build, fresh=args.recheck, every=args.recheck)
    server = server_binary()
    archive = llama_archive(build)
    model, flags = cpu_facts()
    report = {
        "build": str(build.root),
        "cpu": model,
        "cpu_flags": flags,
        "glibc": glibc_version(),
        "cpu_kernels": verdict.to_json(),
        "llama_server": str(server.path),
        "worker_runtime": {
            "path": str(archive.path),
            "id": archive.id,
            "bytes": archive.path.stat().st_size,
            "arch": archive.arch,
            "glibc": archive.glibc,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"llama.cpp build: {build.root}")
    print(f"this CPU: {model} ({platform.machine()}; {' '.join(flags) or 'no flags read'})")
    print(verdict.summary())
    for result in verdict.results:
        layouts = f" ({', '.join(result.layouts)})" if result.layouts else ""
        detail = f": {result.detail}" if result.detail else ""
        print(f"  {result.variant:<16} score {result.score:<4} {result.status}{layouts}{detail}")
    if not args.recheck:
        print("  (variants below the first that passed were not run: --recheck runs them all)")
    print(f"llama-server: {server.path}")
    print(
        f"worker runtime shipped to hosts: {archive.path.name}, "
        f"{human_bytes(archive.path.stat().st_size)}, {archive.arch}, glibc >= {archive.glibc}"
    )
    return 0
