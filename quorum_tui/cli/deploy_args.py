"""Arguments every deploying command shares, and the lines it prints for deployment events."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from quorum_tui.cli.cluster_cmds import EventPrinter, ask_host_key
from quorum_tui.cluster.bringup import BringUpOptions
from quorum_tui.cluster.events import HostEvent
from quorum_tui.deploy.deployment import REJOIN_AFTER, Target
from quorum_tui.deploy.events import (
    DeployEvent,
    FailedOver,
    FailingOver,
    Phase,
    PhaseChanged,
    Planned,
    RejoinFailed,
    WorkerBack,
    WorkersReady,
)
from quorum_tui.deploy.placement import WeightsPlaced
from quorum_tui.deploy.plans import PlanRequest
from quorum_tui.deploy.pool import WorkerEvent
from quorum_tui.engine.plan import WorkerRef, parse_split
from quorum_tui.engine.settings import DEFAULT_CTX, DEFAULT_SLOTS, EngineSettings
from quorum_tui.engine.speculation import MODES as SPEC_MODES
from quorum_tui.engine.supervisor import Loaded, Loading
from quorum_tui.models.download import Progress
from quorum_tui.models.progress import ProgressLine

MODEL_HELP = (
    "a .gguf path, smollm2-135m, owner/repo:QUANT, owner/repo/file.gguf, an https URL, "
    "or synthetic:layers=N,..."
)


def add_worker_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT", help=help)


def workers_from_args(args: argparse.Namespace) -> list[WorkerRef]:
    """`--worker` endpoints as w1, w2, ... (checked)."""
    return list(Target.endpoints(getattr(args, "worker", None) or []).workers)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="context per slot (tokens)")
    p.add_argument(
        "--slots", type=int, default=DEFAULT_SLOTS, help="requests served at once (default 4)"
    )
    p.add_argument("--threads", type=int, default=0, help="coordinator threads (default: auto)")
    p.add_argument(
        "--no-repack",
        action="store_true",
        help="keep quantized weights as RPC workers hold them (bit-exact with sharded runs)",
    )
    p.add_argument(
        "--spec",
        choices=SPEC_MODES,
        default="off",
        help="speculative decoding: ngram (no second model) or draft (with --draft)",
    )
    p.add_argument(
        "--draft", metavar="MODEL", help="a small draft model of the same vocabulary (--spec draft)"
    )


SERVER_ARGS_EPILOG = (
    "llama-server's own options go after `--`, e.g. `-- --alias mine -ctk q8_0 --temp 0.7`; "
    "they reach the coordinator unchanged (and win over Quorum's defaults). Options Quorum "
    "owns (--rpc, -ngl, -ts, --host, --port, -c, -np, ...) are refused with what to use instead."
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.epilog = SERVER_ARGS_EPILOG
    p.add_argument("model", help=MODEL_HELP)
    add_worker_arg(p)
    p.add_argument("--split", help="layers per stage, coordinator first: C,W1,...,Wn")
    p.add_argument(
        "--auto", action="store_true", help="measure the workers; the planner picks order and split"
    )
    add_engine_args(p)


def add_failover_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-failover",
        action="store_true",
        help="when a worker dies, stop (naming it) instead of re-planning on the survivors",
    )
    p.add_argument(
        "--rejoin-after",
        type=float,
        default=REJOIN_AFTER,
        metavar="S",
        help=f"use a worker that came back after S quiet seconds (default {REJOIN_AFTER:g})",
    )


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=Path, metavar="FILE", help="bring up these hosts' workers")
    p.add_argument("--accept-new-host-keys", action="store_true")


def settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """The engine settings of the command line (a deployment over `--cluster FILE` puts that
    file's llama-server options before these)."""
    return EngineSettings(
        ctx=args.ctx,
        slots=args.slots,
        threads=args.threads,
        repack=not args.no_repack,
        spec="draft" if args.draft and args.spec == "off" else args.spec,
        draft=args.draft,
        server_args=tuple(getattr(args, "server_args", ())),
    )


def plan_request(args: argparse.Namespace) -> PlanRequest:
    split = tuple(parse_split(args.split)) if args.split else None
    return PlanRequest(split, getattr(args, "auto", False))


def target_from_args(args: argparse.Namespace) -> Target:
    """`--worker` endpoints, or `--cluster FILE` (whose host events the printer shows)."""
    cluster = getattr(args, "cluster", None)
    if cluster is None:
        return Target.endpoints(args.worker)
    options = BringUpOptions(
        accept_new_host_keys=getattr(args, "accept_new_host_keys", False), prompt=ask_host_key
    )
    return Target(tuple(workers_from_args(args)), cluster, bring_up=options)


TOLD = (Phase.WAITING, Phase.REJOINING, Phase.STOPPED)
"""The phases the printer announces with their reason (loading, serving and failing over have
lines of their own; a failed start is the command's error)."""


class DeployPrinter:
    """Deployment events as lines on stderr: downloads, warnings, the planner's reasons."""

    def __init__(self, out: TextIO | None = None, loading: bool = False) -> None:
        self.out = out or sys.stderr
        self.loading = loading
        self.progress = ProgressLine(self.out)
        self.hosts = EventPrinter(self.out)

    def __call__(self, event: DeployEvent) -> None:
        if isinstance(event, Progress):
            self.progress(event)
        elif isinstance(event, HostEvent):
            self.hosts(event)
        elif isinstance(event, WorkersReady):
            for warning in event.warnings:
                print(f"warning: {warning}", file=self.out)
        elif isinstance(event, Planned) and event.explanation is not None:
            for line in event.explanation.lines():
                print(line, file=self.out)
        elif isinstance(event, Loading):
            if self.loading:
                print(f"loading with plan: {event.plan.summary()} (log: {event.log_path})",
                      file=self.out)  # fmt: skip
            print(event.cpu, file=self.out)
        elif isinstance(event, Loaded) and self.loading:
            print(f"loaded in {event.load_s:.2f}s; llama.cpp realized the plan exactly",
                  file=self.out)  # fmt: skip
        elif isinstance(event, FailingOver):
            print(f"failing over: {event.reason}", file=self.out)
        elif isinstance(event, FailedOver):
            print(
                f"failed over in {event.seconds:.1f}s: {event.before.summary()} -> "
                f"{event.plan.summary()}",
                file=self.out,
            )
        elif isinstance(event, WorkerBack):
            print(f"worker {event.worker.name} ({event.worker.endpoint}) is back", file=self.out)
        elif isinstance(event, WeightsPlaced):
            print(event.describe(), file=self.out)
        elif isinstance(event, WorkerEvent):
            print(f"worker {event.worker.name}: {event.state}: {event.reason}", file=self.out)
        elif isinstance(event, RejoinFailed):
            names = ", ".join(w.name for w in event.workers)
            print(f"{names} not used again yet: {event.reason}", file=self.out)
        elif isinstance(event, PhaseChanged) and event.phase in TOLD and event.reason:
            print(f"{event.phase}: {event.reason}", file=self.out)
        self.out.flush()
