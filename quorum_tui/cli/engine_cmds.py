"""Engine commands: worker, probe, inspect, plan, serve, run, synth, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quorum_tui.cli.deploy_args import (
    DeployPrinter,
    add_cluster_args,
    add_failover_args,
    add_model_args,
    plan_request,
    settings_from_args,
    target_from_args,
)
from quorum_tui.deploy.deployment import Access, Deployment, local_free
from quorum_tui.deploy.gateway import PLAN_ROUTE
from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import plan_from_assignment
from quorum_tui.engine.probe import ProbeResult, probe_all
from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes

Subparsers = Any


def register(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="run a llama.cpp RPC worker in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="numeric IPv4 address to bind")
    p.add_argument("--port", type=int, default=50052)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, help="tensor cache directory")
    cache.add_argument("--no-cache", action="store_true", help="turn the tensor cache off")
    p.add_argument("--log", type=Path, help="file for llama.cpp's own output")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("probe", help="ask workers for protocol version and memory")
    p.add_argument("endpoints", nargs="+", metavar="HOST:PORT")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("inspect", help="show what planning needs to know about a model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plan", help="show a layer plan, its memory and llama-server's parameters")
    add_model_args(p)
    add_cluster_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("serve", help="serve the sharded model over an OpenAI-compatible API")
    add_model_args(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address(es) to bind, comma-separated (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", help="require this key (Authorization: Bearer KEY)")
    add_failover_args(p)
    add_cluster_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="generate from a prompt through the workers")
    add_model_args(p)
    add_generation_args(p)
    add_failover_args(p)
    add_cluster_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="write a deterministic synthetic llama model (random weights)")
    p.add_argument("output", type=Path)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--ff", type=int, default=0)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--n-predict", type=int, default=64)
    p.add_argument("--temp", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path, help="write a JSON report of the run here")


def cmd_worker(args: argparse.Namespace) -> int:
    from quorum_tui.engine.worker import WorkerOptions, default_cache_dir, run_worker

    cache = None if args.no_cache else (args.cache or default_cache_dir())
    run_worker(
        WorkerOptions(args.host, args.port, args.threads, cache, args.log, args.exit_with_parent)
    )
    return 1


def cmd_probe(args: argparse.Namespace) -> int:
    for endpoint in args.endpoints:
        parse_endpoint(endpoint)
    results = asyncio.run(probe_all(args.endpoints, args.timeout))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            print(format_probe(r))
    return 0 if all(r.ok for r in results) else 1


def format_probe(r: ProbeResult) -> str:
    if not r.ok:
        return f"{r.endpoint}  {r.status}: {r.reason}"
    devices = ", ".join(
        f"dev{i} {human_bytes(d.free)} free of {human_bytes(d.total)}"
        for i, d in enumerate(r.devices)
    )
    rtt = f", {r.rtt_ms:.1f} ms" if r.rtt_ms is not None else ""
    unvouched = "" if r.vouched else f"; {UNVOUCHED}"
    return (
        f"{r.endpoint}  ok: protocol {r.version_text}, {len(r.devices)} device(s): "
        f"{devices}{rtt}{unvouched}"
    )


UNVOUCHED = (
    "free memory as llama.cpp reports it (all RAM counted free): Quorum cannot vouch for it; "
    "a `quorum worker` there would report what it may really use"
)


def resolve(model: str) -> Path:
    from quorum_tui.models.resolve import resolve_model

    return resolve_model(model)


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_model(resolve(args.model))
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
        return 0
    per_layer = sorted(set(info.layer_bytes))
    layer_text = (
        human_bytes(per_layer[0])
        if len(per_layer) == 1
        else f"{human_bytes(min(per_layer))}-{human_bytes(max(per_layer))}"
    )
    rows = [
        ("model", info.name),
        ("file", f"{info.path} ({human_bytes(info.file_bytes)})"),
        ("architecture", info.architecture),
        ("layers", str(info.n_layers)),
        ("embedding width", str(info.n_embd)),
        ("heads", f"{info.n_head} ({info.n_head_kv} KV)"),
        ("vocabulary", str(info.n_vocab)),
        ("context length", str(info.n_ctx_train)),
        ("weights type", info.quant),
        ("bytes per layer", layer_text),
        ("embeddings", human_bytes(info.embedding_bytes)),
        ("output", human_bytes(info.output_bytes) + (" (tied)" if info.tied_output else "")),
        ("KV cache", f"{info.kv_bytes_per_token_per_layer} bytes per token per layer (f16)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    return asyncio.run(_plan(args))


async def _plan(args: argparse.Namespace) -> int:
    from quorum_tui.engine.llama_server import ServerOptions, server_argv
    from quorum_tui.engine.memory import stage_memory

    settings = settings_from_args(args)
    printer = DeployPrinter()
    async with Deployment(target_from_args(args), settings, on_event=printer) as deployment:
        prepared = await deployment.prepare(args.model, plan_request(args))
        plan, info = prepared.plan, prepared.info
        results = await probe_all([w.endpoint for w in plan.workers])
        threads = deployment.threads
    refuse = [
        f"worker {w.name} ({w.endpoint}) is {r.status}: {r.reason}"
        for w, r in zip(plan.workers, results, strict=True)
        if r.status == "incompatible"
    ]
    if refuse:
        raise QuorumError("; ".join(refuse))
    settings = deployment.settings
    memory = stage_memory(info, plan, settings.ctx, settings.slots, prepared.draft)
    free: list[int | None] = [local_free(), *(r.free if r.ok else None for r in results)]
    counts = [len(r.devices) if r.ok else 1 for r in results] or None
    params = plan.to_llama_params(counts)
    draft = Path(prepared.draft.path) if prepared.draft else None
    options = ServerOptions.from_settings(deployment.settings, threads, prepared.path, draft)
    argv = server_argv(prepared.path, plan, options, counts)
    rows: list[dict[str, Any]] = []
    for index, (stage, mem, avail) in enumerate(zip(plan.stages, memory, free, strict=True)):
        rows.append(
            {
                "name": stage.name,
                "endpoint": stage.endpoint,
                "layers": [stage.first, stage.last] if stage.count else None,
                "output": index == plan.output_stage,
                "memory": mem.to_json(),
                "free": avail,
                "fits": None if avail is None else mem.total <= avail,
                "status": "ok" if index == 0 else results[index - 1].status,
                "reason": None if index == 0 else results[index - 1].reason,
                "free_vouched": index == 0 or results[index - 1].vouched,
            }
        )
    if args.json:
        body: dict[str, Any] = {
            "model": info.path,
            "ctx": settings.ctx,
            "slots": settings.slots,
            "threads": threads,
            "stages": rows,
            "llama": asdict(params),
            "llama_server": argv[1:],
            "speculation": settings.spec,
            "draft": prepared.draft.to_json() if prepared.draft else None,
        }
        if prepared.explanation is not None:
            body["planner"] = prepared.explanation.to_json()
        print(json.dumps(body, indent=2))
        return 0
    print(f"{info.name}: {info.n_layers} layers, context {settings.ctx} x {settings.slots} slots")
    for row in rows:
        layers = "-" if row["layers"] is None else "{}-{}".format(*row["layers"])
        out = " +output" if row["output"] else ""
        need = human_bytes(row["memory"]["total"])
        have = "?" if row["free"] is None else human_bytes(row["free"])
        verdict = {True: "fits", False: "DOES NOT FIT", None: row["reason"] or "unknown"}[
            row["fits"]
        ]
        where = row["endpoint"] or "local"
        doubt = "" if row["free_vouched"] or row["free"] is None else f" ({UNVOUCHED})"
        print(f"  {row['name']:<12} {where:<22} layers {layers:<8}{out:<8} needs {need:>10}, "
              f"free {have:>10}: {verdict}{doubt}")  # fmt: skip
    split = ", ".join(f"{x:g}" for x in params.tensor_split)
    print(f"llama.cpp: n_gpu_layers={params.n_gpu_layers} tensor_split=[{split}] split_mode=layer")
    print(f"device order: {', '.join(params.devices) or '(none)'}")
    if prepared.draft is not None:
        print(f"draft: {Path(prepared.draft.path).name} on the coordinator (in its memory above)")
    if prepared.explanation is None and plan.workers:
        print("speculation outlook: --auto measures whether round trips or compute bound a token")
    print("llama-server " + " ".join(shlex.quote(a) for a in argv[1:]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from quorum_tui.engine.completion import CompletionRequest

    request = CompletionRequest(args.prompt, args.n_predict, args.temp, args.seed)
    settings = settings_from_args(args)
    deployment = Deployment(
        target_from_args(args),
        settings,
        on_event=DeployPrinter(),
        failover=not args.no_failover,
        rejoin_after=args.rejoin_after,
    )
    async with deployment:
        prepared = await deployment.prepare(args.model, plan_request(args))
        await deployment.start(prepared)
        result = await deployment.run(request, sys.stdout)
    result.explanation = prepared.explanation
    sys.stdout.write("\n")
    sys.stdout.flush()
    realized_plan, _ = plan_from_assignment(result.realized, result.plan.workers)
    done = result.done
    print(
        f"realized split: {realized_plan.summary()} | {done.completion_tokens} tokens, "
        f"{done.tokens_per_s:.1f} tokens/s, load {result.load_s:.2f}s",
        file=sys.stderr,
    )
    if prepared.explanation is not None:
        print(f"planner predicted {prepared.explanation.predicted_tps:.1f} tokens/s",
              file=sys.stderr)  # fmt: skip
    for failover in done.failovers:
        print(
            f"failed over at {failover.when} after {failover.after_tokens} tokens "
            f"({failover.resumed}): {failover.plan_before} -> {failover.plan_after}",
            file=sys.stderr,
        )
    if args.report:
        args.report.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    access = Access(args.host, args.port, args.api_key)
    deployment = Deployment(
        target_from_args(args),
        settings,
        access,
        DeployPrinter(loading=True),
        failover=not args.no_failover,
        rejoin_after=args.rejoin_after,
    )
    terminated = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    async with deployment:
        prepared = await deployment.prepare(args.model, plan_request(args))
        url = await deployment.start(prepared)
        print(f"serving OpenAI-compatible API at {url}/v1", flush=True)
        print(f"realized assignment: {url}{PLAN_ROUTE}", flush=True)
        ended = asyncio.ensure_future(deployment.wait())
        asked = asyncio.ensure_future(terminated.wait())
        await asyncio.wait([ended, asked], return_when="FIRST_COMPLETED")
        if terminated.is_set():
            ended.cancel()
            return 0
        asked.cancel()
        reason = ended.result()
    raise QuorumError(reason or "the coordinator stopped")


def cmd_synth(args: argparse.Namespace) -> int:
    from quorum_tui.engine.synthetic import SyntheticSpec, write_synthetic

    spec = SyntheticSpec(
        n_layers=args.layers,
        n_embd=args.embd,
        n_ff=args.ff,
        n_head=args.heads,
        n_head_kv=args.kv_heads,
        n_vocab=args.vocab,
        n_ctx=args.ctx,
        dtype=args.dtype,
        seed=args.seed,
    )
    path = write_synthetic(args.output, spec)
    print(f"wrote {path} ({human_bytes(path.stat().st_size)}): {spec.resolved().slug()}")
    return 0
