"""`quorum demo`: the app on a local demo cluster of real workers (or `--headless`: one run)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from quorum_tui.errors import QuorumError
from quorum_tui.tui.session import DEMO_MODEL, DEMO_WORKERS

DEMO_PROMPT = "Once upon a time"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="open the app on a local demo cluster (local workers)")
    p.add_argument("--workers", type=int, default=DEMO_WORKERS,
                   help=f"local workers to start, 1-3 (default {DEMO_WORKERS})")  # fmt: skip
    p.add_argument(
        "--model",
        help=f"model spec (default {DEMO_MODEL}: SmolLM2-135M-Instruct, a real model from the "
        "package registry; synthetic:... for random weights)",
    )
    p.add_argument("--headless", action="store_true",
                   help="no app: start the workers, stream one generation, stop")  # fmt: skip
    p.add_argument("-n", "--n-predict", type=int, default=48, help="tokens for --headless")
    p.set_defaults(func=cmd_demo, full_screen=True)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 3:
        raise QuorumError(f"--workers {args.workers}: the demo runs 1 to 3 local workers")
    if args.headless:
        return headless(args)
    from quorum_tui.cli.tui_cmds import run_app
    from quorum_tui.tui.app import QuorumApp
    from quorum_tui.tui.session import Setup

    run_app(QuorumApp(Setup(model=args.model, demo_workers=args.workers, temperature=0.0)))
    return 0


def headless(args: argparse.Namespace) -> int:
    return asyncio.run(_headless(args))


async def _headless(args: argparse.Namespace) -> int:
    from quorum_tui.cli.deploy_args import DeployPrinter
    from quorum_tui.deploy.deployment import Deployment, Target
    from quorum_tui.engine.completion import CompletionRequest

    print(f"starting {args.workers} local workers...", file=sys.stderr)
    async with Deployment(Target(local_workers=args.workers), on_event=DeployPrinter()) as demo:
        prepared = await demo.prepare(args.model or DEMO_MODEL)
        print(f"model: {prepared.path.name} ({prepared.info.n_layers} layers)", file=sys.stderr)
        print(f"plan: {prepared.plan.summary()}", file=sys.stderr)
        await demo.start(prepared)
        result = await demo.run(CompletionRequest(DEMO_PROMPT, args.n_predict), sys.stdout)
    print(f"\n{result.done.completion_tokens} tokens, {result.done.tokens_per_s:.1f} tokens/s",
          file=sys.stderr)  # fmt: skip
    return 0
