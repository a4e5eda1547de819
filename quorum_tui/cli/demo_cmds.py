"""`quorum demo`: a local demo cluster of real workers and the synthetic model."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.models.resolve import resolve_model

DEMO_MODEL = "synthetic:layers=8,embd=256,heads=8,vocab=1024,dtype=f16"
DEMO_PROMPT = "Once upon a time"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="start two local workers and stream a sharded generation")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", default=DEMO_MODEL)
    p.add_argument("-n", "--n-predict", type=int, default=48)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from quorum_tui.cli.engine_cmds import run_job
    from quorum_tui.engine.coordinator import Job

    path = resolve_model(args.model)
    info = inspect_model(path)
    print(f"model: {info.name} ({info.n_layers} layers), random weights: the text is noise",
          file=sys.stderr)  # fmt: skip
    with LocalCluster(paths.cache_dir() / "demo") as cluster:
        print(f"starting {args.workers} local workers...", file=sys.stderr)
        cluster.start(args.workers)
        counts = [1, *LayerPlan.even(info.n_layers - 1, cluster.refs).counts[1:]]
        plan = LayerPlan.from_counts(info.n_layers, counts, cluster.refs)
        print(f"plan: {plan.summary()}", file=sys.stderr)
        job = Job(str(path), list(plan.workers), list(plan.counts), prompt=DEMO_PROMPT,
                  n_predict=args.n_predict)  # fmt: skip
        return asyncio.run(run_job(job, plan, None))
