"""`quorum bench tunnel`: tokens/s through the SSH tunnels and directly to the same workers.

The workers are started bound to each host's address (so every path reaches the very same
processes); the tunnels forward to that address. In interleaved rounds of one run: direct,
the cluster file's tunnel client (OpenSSH by default), asyncssh's forward on the bring-up
connection, and asyncssh's forward on a second connection without any session (sshd then
leaves Nagle on, as with `ssh -N -L`). Each round runs every path once, starting from a
different one each time; the ratio is the median of the rounds' own tunnel/direct ratios, so
a change in the machine's load between rounds does not move it. The round trip of each path
(the median of small RPC calls on one connection) is reported too: it is what a tunnel adds
to every token, once per worker. The workers are stopped afterwards (they were listening on
the network).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from quorum_tui.bench.hosts import add_host_args, run_on_hosts
from quorum_tui.cluster.bringup import BringUpOptions, bring_up, down
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.cluster.sessions import HostSession, connect
from quorum_tui.cluster.tunnels import Tunnel, open_openssh_tunnel, open_tunnel
from quorum_tui.engine.measure import link_rtt
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.trials import Trial, run_trials
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged

log = logging.getLogger(__name__)

TINY_MODEL = "synthetic:layers=5"


def register(sub: Any) -> None:
    p = sub.add_parser("tunnel", help="tokens/s through SSH tunnels vs direct, same workers")
    add_host_args(p)
    p.add_argument("--model", default=TINY_MODEL, help="tiny by default: the latency-bound case")
    p.add_argument("-n", "--n-predict", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--accept-new-host-keys", action="store_true")
    p.add_argument(
        "--skip-nagle",
        action="store_true",
        help="skip the tunnels on a connection without any session",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_tunnel)


def cmd_bench_tunnel(args: argparse.Namespace) -> int:
    result = run_on_hosts(args, bench)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['workers']} worker(s), {result['model']}, {args.n_predict} tokens, "
            f"{args.rounds} round(s): tunnel ({result['tunnel_client']}) "
            f"{result['tunnel_tps']:.1f} tokens/s, direct {result['direct_tps']:.1f} tokens/s, "
            f"ratio {result['ratio']:.2f} (median of the rounds' own ratios)"
        )
        rtts = ", ".join(f"{name} {us:.0f} us" for name, us in result["rtt_us"].items())
        print(f"round trip to the first worker: {rtts}")
        print(f"asyncssh forward: {result['asyncssh_tps']:.1f} tokens/s")
        if result["without_session_tps"] is not None:
            print(
                "asyncssh forward on a connection without any session (sshd keeps Nagle on): "
                f"{result['without_session_tps']:.1f} tokens/s"
            )
    return 0


async def generate(model: Path, workers: list[WorkerRef], n: int, n_layers: int) -> float:
    """Tokens/s of the plan spread evenly over `workers`, from the median time per token."""
    plan = LayerPlan.even(n_layers, workers)
    trial = Trial("tunnel", str(model), list(plan.counts))
    (result,) = await run_trials(plan.workers, [trial], n, repeats=1, ctx=1024)
    if result.mismatch:
        raise QuorumError(f"llama.cpp did not load the plan: {'; '.join(result.mismatch)}")
    return result.tokens_per_s


async def bench(inv: Inventory, args: argparse.Namespace) -> dict[str, Any]:
    from quorum_tui.engine.gguf_info import inspect_model
    from quorum_tui.models.resolve import resolve_model

    model = resolve_model(args.model)
    n_layers = inspect_model(model).n_layers
    direct_inv = replace(inv, hosts=[replace(h, transport="direct") for h in inv.hosts])
    options = BringUpOptions(accept_new_host_keys=args.accept_new_host_keys)
    cluster = await bring_up(direct_inv, options)
    tunnels: list[Tunnel] = []
    extra_sessions: list[HostSession] = []
    try:
        cluster.require_all()
        paths: dict[str, list[WorkerRef]] = {"direct": cluster.workers}
        for client in dict.fromkeys([inv.tunnel_client, "asyncssh"]):
            paths[client] = []
            for r in cluster.results:
                assert r.session is not None and r.endpoint is not None
                ip = r.endpoint.split(":")[0]
                if client == "openssh":
                    tunnel = await open_openssh_tunnel(inv, r.session, r.host.rpc_port, 0, ip)
                else:
                    tunnel = await open_tunnel(r.session, r.host.rpc_port, remote_host=ip)
                tunnels.append(tunnel)
                paths[client].append(WorkerRef(r.host.name, tunnel.endpoint))
        if not args.skip_nagle:
            paths["without_session"] = []
            for r in cluster.results:
                session = await connect(direct_inv, r.host)
                extra_sessions.append(session)
                assert r.endpoint is not None
                ip = r.endpoint.split(":")[0]
                tunnel = await open_tunnel(session, r.host.rpc_port, remote_host=ip)
                tunnels.append(tunnel)
                paths["without_session"].append(WorkerRef(r.host.name, tunnel.endpoint))
        rtt_us = {
            name: await asyncio.to_thread(link_rtt, workers[0].endpoint, 400) * 1e6
            for name, workers in paths.items()
        }
        runs: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        await generate(model, paths["direct"], 8, n_layers)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                runs[name].append(await generate(model, paths[name], args.n_predict, n_layers))
    finally:
        for tunnel in tunnels:
            await tunnel.aclose()
        for session in extra_sessions:
            await session.close()
        await cluster.close()
        with logged(log, "stopping the direct workers", QuorumError):
            await down(direct_inv, options)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    direct_tps = medians["direct"]
    ratios = [
        tunnel / direct
        for tunnel, direct in zip(runs[inv.tunnel_client], runs["direct"], strict=True)
        if direct
    ]
    return {
        "model": args.model,
        "workers": len(paths["direct"]),
        "tokens": args.n_predict,
        "rounds": args.rounds,
        "tunnel_client": inv.tunnel_client,
        "tunnel_tps": medians[inv.tunnel_client],
        "direct_tps": direct_tps,
        "ratio": statistics.median(ratios) if ratios else 0.0,
        "round_ratios": ratios,
        "rtt_us": rtt_us,
        "asyncssh_tps": medians["asyncssh"],
        "without_session_tps": medians.get("without_session"),
        "runs": runs,
    }
