"""`quorum demo`: the app on a local demo cluster of real workers (or `--headless`: one run)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.errors import QuorumError
from quorum_tui.models.resolve import resolve_model
from quorum_tui.tui.session import DEMO_MODEL, DEMO_WORKERS

DEMO_PROMPT = "Once upon a time"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="open the app on a local demo cluster (local workers)")
    p.add_argument("--workers", type=int, default=DEMO_WORKERS,
                   help=f"local workers to start, 1-3 (default {DEMO_WORKERS})")  # fmt: skip
    p.add_argument("--model", default=None,
                   help="model spec (default: a small Hub model when online, else "
                   f"{DEMO_MODEL}, random weights)")  # fmt: skip
    p.add_argument("--headless", action="store_true",
                   help="no app: start the workers, stream one generation, stop")  # fmt: skip
    p.add_argument("-n", "--n-predict", type=int, default=48, help="tokens for --headless")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 3:
        raise QuorumError(f"--workers {args.workers}: the demo runs 1 to 3 local workers")
    if args.headless:
        return headless(args)
    from quorum_tui.cli.tui_cmds import run_app
    from quorum_tui.tui.app import QuorumApp
    from quorum_tui.tui.session import Setup

    run_app(QuorumApp(Setup(model=args.model, demo_workers=args.workers)))
    return 0


def headless(args: argparse.Namespace) -> int:
    from quorum_tui.cli.engine_cmds import run_job
    from quorum_tui.engine.coordinator import Job

    path = resolve_model(args.model or DEMO_MODEL)
    info = inspect_model(path)
    print(f"model: {info.name} ({info.n_layers} layers)", file=sys.stderr)
    with LocalCluster(paths.ensure(paths.data_dir() / "demo-workers")) as cluster:
        print(f"starting {args.workers} local workers...", file=sys.stderr)
        cluster.start(args.workers)
        plan = LayerPlan.even(info.n_layers, cluster.refs)
        print(f"plan: {plan.summary()}", file=sys.stderr)
        job = Job(str(path), list(plan.workers), list(plan.counts), prompt=DEMO_PROMPT,
                  n_predict=args.n_predict)  # fmt: skip
        return asyncio.run(run_job(job, plan, None))
