"""`quorum pull`, `quorum preview`, `quorum models [rm NAME]`: the local model cache."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from quorum_tui.cli.deploy_args import add_worker_arg, workers_from_args
from quorum_tui.engine.settings import DEFAULT_CTX, DEFAULT_SLOTS, EngineSettings
from quorum_tui.models.registry import REAL_DEMO_MODEL, registry_names
from quorum_tui.units import human_bytes

Subparsers = Any


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "pull",
        help="download a model into the cache: owner/repo:QUANT, owner/repo/file.gguf, a URL "
        f"or a model name ({registry_names()})",
    )
    p.add_argument(
        "spec", help="owner/repo:QUANT, owner/repo/path/file.gguf, https://... or a model name"
    )
    p.add_argument("--preview", action="store_true", help="only describe it (reads its header)")
    _add_plan_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "preview", help="describe a model before pulling it (GGUF header over HTTP range)"
    )
    p.add_argument("spec")
    _add_plan_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("models", help="the models in the local cache")
    p.add_argument("--json", action="store_true")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    rm = msub.add_parser("rm", help="delete a cached model (all parts of a split one)")
    rm.add_argument("name", help="a name as `quorum models` lists it, or its path")
    rm.set_defaults(func=cmd_models_rm)
    p.set_defaults(func=cmd_models)


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    add_worker_arg(p)
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="context per slot (tokens)")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="requests served at once")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each worker")


def cmd_pull(args: argparse.Namespace) -> int:
    if args.preview:
        return cmd_preview(args)
    from quorum_tui.models import hub
    from quorum_tui.models.progress import ProgressLine
    from quorum_tui.models.pull import describe_pull, pull
    from quorum_tui.models.spec import parse_spec

    spec = parse_spec(args.spec, hub.hub_hosts())
    pulled = pull(args.spec, spec, ProgressLine())
    if args.json:
        print(
            json.dumps(
                {
                    "spec": pulled.spec,
                    "path": str(pulled.path),
                    "parts": [str(p) for p in pulled.parts],
                    "fetched": pulled.fetched,
                },
                indent=2,
            )
        )
    else:
        print(describe_pull(pulled))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from quorum_tui.engine.probe import probe_all
    from quorum_tui.models import hub
    from quorum_tui.models.preview import plan_needs, preview
    from quorum_tui.models.spec import parse_spec

    settings = EngineSettings(ctx=args.ctx, slots=args.slots)
    workers = workers_from_args(args)
    found = preview(args.spec, parse_spec(args.spec, hub.hub_hosts()))
    info = found.info
    needs = plan_needs(info, workers, settings.ctx, settings.slots)
    results = asyncio.run(probe_all([w.endpoint for w in workers], args.timeout)) if workers else []
    free: list[int | None] = [_local_free(), *(r.free if r.ok else None for r in results)]
    status = [("ok", None), *((r.status, r.reason) for r in results)]
    output = max((i for i, (stage, _) in enumerate(needs) if stage.count), default=0)
    stages: list[dict[str, Any]] = []
    for index, ((stage, mem), avail, (state, reason)) in enumerate(
        zip(needs, free, status, strict=True)
    ):
        stages.append(
            {
                "name": stage.name,
                "endpoint": stage.endpoint,
                "layers": [stage.first, stage.last] if stage.count else None,
                "output": index == output,
                "memory": mem.to_json(),
                "free": avail,
                "fits": None if avail is None else mem.total <= avail,
                "status": state,
                "reason": reason,
            }
        )
    if args.json:
        print(
            json.dumps(
                {
                    "spec": found.spec,
                    "cached": found.cached,
                    "files": list(found.files),
                    "size": found.size,
                    "ctx": args.ctx,
                    "model": info.to_json(),
                    "stages": stages,
                },
                indent=2,
            )
        )
        return 0
    where = "in the cache" if found.cached else "remote, header only"
    files = ", ".join(found.files)
    rows = [
        ("model", info.name),
        ("source", f"{found.spec} ({where})"),
        ("files", files),
        ("architecture", info.architecture),
        ("layers", str(info.n_layers)),
        ("size", human_bytes(found.size)),
        ("weights type", info.quant),
        ("context length", str(info.n_ctx_train)),
        ("KV cache", f"{info.kv_bytes_per_token_per_layer} bytes per token per layer (f16)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    label = f"{len(workers)} worker(s)" if workers else "this machine alone"
    print(f"an even plan on {label}, context {args.ctx}:")
    for row in stages:
        layers = "-" if row["layers"] is None else "{}-{}".format(*row["layers"])
        need = human_bytes(row["memory"]["total"])
        have = "?" if row["free"] is None else human_bytes(row["free"])
        unknown = row["reason"] or row["status"]
        verdict = {True: "fits", False: "DOES NOT FIT", None: unknown}[row["fits"]]
        place = row["endpoint"] or "local"
        out = " +output" if row["output"] else ""
        print(f"  {row['name']:<12} {place:<22} layers {layers:<8}{out:<8} needs {need:>10}, "
              f"free {have:>10}: {verdict}")  # fmt: skip
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from quorum_tui.models.cache import cached_models, models_dir

    models = cached_models()
    if args.json:
        print(json.dumps([m.to_json() for m in models], indent=2))
        return 0
    if not models:
        print(
            f"no models in {models_dir()}: `quorum pull owner/repo:QUANT` adds one "
            f"(or `quorum pull {REAL_DEMO_MODEL}`)"
        )
        return 0
    rows = [
        (
            m.name,
            human_bytes(m.size),
            "?" if m.layers is None else str(m.layers),
            m.quant or "?",
            str(m.path) + (f" ({len(m.parts)} parts)" if len(m.parts) > 1 else ""),
        )
        for m in models
    ]
    header = ("NAME", "SIZE", "LAYERS", "QUANT", "PATH")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    from quorum_tui.models.cache import find_cached, remove

    model = find_cached(args.name)
    freed = remove(model)
    print(f"removed {model.name} ({human_bytes(freed)} freed)")
    return 0


def _local_free() -> int:
    from quorum_tui.engine.room import room

    return room().free
