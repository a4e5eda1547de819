"""Measuring a real local cluster, planning on it, and running the plan."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from quorum_tui.cli import main
from quorum_tui.deploy.deployment import Deployment, Prepared
from quorum_tui.engine.completion import CompletionRequest
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.measure import (
    link_bandwidth,
    link_rtt,
    measure_cluster,
    measuring_layers,
    shape_spec,
)
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import CostModel, explain, solve
from quorum_tui.engine.probe import CMD_HELLO, HELLO_REQUEST_BYTES, probe
from quorum_tui.engine.trials import Trial, run_trials
from quorum_tui.errors import QuorumError


async def generate(model: Path, plan: LayerPlan, prompt: str = "the worker", n: int = 12) -> str:
    """The greedy text of `plan`, served as `quorum run` serves it."""
    out = io.StringIO()
    async with Deployment() as deployment:
        await deployment.start(Prepared(model, inspect_model(model), plan))
        await deployment.run(CompletionRequest(prompt, n), out)
    return out.getvalue()


async def test_measured_plan_runs_and_matches_the_single_process_run(
    local_cluster: LocalCluster, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    model = make_model(n_layers=6, n_embd=128)
    info = inspect_model(model)
    local_cluster.start(2, threads=1)
    refs = local_cluster.refs
    cost = CostModel(info, 512)
    # The coordinator may hold at most one layer, so the plan must use the workers.
    coord_cap = cost.memory(0, 1, True, False).total
    measured = await measure_cluster(
        info, refs, coordinator_memory=coord_cap, tokens=8, repeats=1, model_dir=tmp_path
    )
    profile = measured.profile
    assert [w.endpoint for w in profile.workers] == [r.endpoint for r in refs]
    for stage in profile.stages:
        assert stage.layer_s > 0
        assert [k for k, _ in stage.curve] == [1, 2, 4, 6]
        times = [t for _, t in stage.curve]
        assert times == sorted(times) and times[0] >= 0
    for link in measured.links:
        assert link.rtt_s > 0 and link.bandwidth > 0
    for worker in profile.workers:
        assert worker.fixed_s >= min(link.rtt_s for link in measured.links)
    assert profile.coordinator.free == coord_cap
    result = solve(info, 512, profile)
    assert result.plan is not None and result.verdict == "sharded"
    assert result.plan.counts[0] <= 1 and sum(result.plan.counts) == 6
    assert all(s.fits for s in result.stages)
    assert result.predicted_tps > 0
    assert json.loads(json.dumps(result.to_json()))["counts"] == list(result.plan.counts)
    for local in local_cluster.workers:
        assert probe(local.endpoint).ok
    sharded = await generate(model, result.plan)
    alone = await generate(model, LayerPlan.from_counts(6, [6], []))
    assert sharded == alone
    assert len(sharded.strip()) > 0


async def test_trials_report_realized_assignments_and_default_split(
    local_cluster: LocalCluster, tiny_model: Path
) -> None:
    local_cluster.start(2)
    refs = local_cluster.refs
    trials = [
        Trial("planned", str(tiny_model), [1, 2, 2]),
        Trial("default", str(tiny_model), None),
        Trial("second-only", str(tiny_model), [0, 0, 5]),
        Trial("reversed", str(tiny_model), [1, 3, 1], ["w2", "w1"]),
        Trial("w2-alone", str(tiny_model), [2, 3], ["w2"]),
    ]
    planned, default, second, reverse, alone = await run_trials(refs, trials, tokens=4, repeats=2)
    assert reverse.realized == [0, 1, 1, 1, 2, 2] and not reverse.mismatch
    assert alone.realized == [0, 0, 1, 1, 1, 1] and not alone.mismatch
    assert planned.realized == [0, 1, 1, 2, 2, 2] and not planned.mismatch
    assert len(planned.per_token_s) == 2 * 4 and planned.tokens_per_s > 0
    assert len(planned.ttft_s) == 2
    assert default.realized is not None
    assert default.realized[0] != 0 and default.realized[-1] == 2
    assert second.realized == [2] * 6
    assert all(t > 0 for t in default.ttft_s)


def test_link_measurements_on_a_real_worker(local_cluster: LocalCluster) -> None:
    local_cluster.start(1)
    endpoint = local_cluster.workers[0].endpoint
    assert 0 < link_rtt(endpoint, samples=5) < 1.0
    assert link_bandwidth(endpoint, large=1 << 20, small=1 << 12, repeats=1) > 1e6
    assert probe(endpoint).ok, "the rejected transfers must leave the worker serving"


def test_links_name_an_unreachable_or_busy_worker(local_cluster: LocalCluster) -> None:
    port = free_port()
    with pytest.raises(QuorumError, match=f"cannot reach worker 127.0.0.1:{port}"):
        link_rtt(f"127.0.0.1:{port}")
    local_cluster.start(1)
    endpoint = local_cluster.workers[0].endpoint
    holder = socket.create_connection(("127.0.0.1", local_cluster.workers[0].port))
    try:
        holder.sendall(struct.pack("<BQ", CMD_HELLO, HELLO_REQUEST_BYTES) + bytes(24))
        holder.recv(8)
        with pytest.raises(QuorumError, match="busy"):
            link_rtt(endpoint, timeout=1.0)
    finally:
        holder.close()


async def test_trials_refuse_unknown_workers(local_cluster: LocalCluster, tiny_model: Path) -> None:
    local_cluster.start(1)
    trial = Trial("bad", str(tiny_model), [1, 4], ["nobody"])
    with pytest.raises(QuorumError, match="unknown workers"):
        await run_trials(local_cluster.refs, [trial], tokens=2, repeats=1)


async def test_measuring_an_unreachable_worker_names_it(tiny_model: Path) -> None:
    info = inspect_model(tiny_model)
    ref = WorkerRef("gone", f"127.0.0.1:{free_port()}")
    with pytest.raises(QuorumError, match="worker gone"):
        await measure_cluster(info, [ref])


def test_shape_spec_keeps_the_layer_shape(make_model: Callable[..., Path]) -> None:
    info = inspect_model(make_model(n_layers=5, n_embd=96, n_head=6, dtype="f16"))
    spec = shape_spec(info, 2).resolved()
    assert (spec.n_embd, spec.n_ff, spec.n_head, spec.n_head_kv, spec.dtype) == (
        96,
        info.n_ff,
        6,
        6,
        "f16",
    )
    assert spec.n_layers == 2


def test_measuring_layers_outgrow_the_caches(make_model: Callable[..., Path]) -> None:
    tiny = inspect_model(make_model(n_layers=5))
    assert measuring_layers(tiny) == [1, 2, 4, 5]
    wide = dataclasses.replace(tiny, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=8, n_layers=32)
    assert measuring_layers(wide) == [1, 2]
    middle = dataclasses.replace(tiny, n_embd=512, n_ff=1376, n_head=8, n_head_kv=8, n_layers=8)
    assert measuring_layers(middle) == [1, 2, 4, 8]
    one = dataclasses.replace(tiny, n_layers=1)
    assert measuring_layers(one) == [1, 2]


def test_quorum_bench_measures_the_current_plan(
    local_cluster: LocalCluster, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local_cluster.start(1)
    endpoint = local_cluster.workers[0].endpoint
    argv = ["bench", "--model", str(tiny_model), "--worker", endpoint, "--split", "2,3"]
    assert main([*argv, "-n", "4", "--repeats", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == [2, 3] and data["realized"] == [0, 0, 1, 1, 1, 1]
    assert data["tokens_per_s"] > 0 and data["ttft_s"] > 0
    assert len(data["tokens_per_s_runs"]) == 2 and len(data["ttft_runs_s"]) == 2
    assert main([*argv, "-n", "4", "--repeats", "1"]) == 0
    assert "tokens/s" in capsys.readouterr().out


def test_quorum_bench_refuses_bad_input(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--model", str(tiny_model), "--tokens", "0"]) == 1
    assert "--tokens and --repeats" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_model), "--split", "1,4"]) == 1
    assert "2 counts but there are 0 workers" in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert "plan" in capsys.readouterr().out
    assert main(["bench", "plan", "--layers", "1"]) == 1
    assert "--layers must be" in capsys.readouterr().err
    assert main(["bench", "plan", "--rounds", "0", "--w2-threads", "0"]) == 1
    assert "--rounds, --w2-threads: give whole numbers >= 1" in capsys.readouterr().err
    assert main(["bench", "plan", "--embd", "100"]) == 1
    assert "--embd" in capsys.readouterr().err


def test_plan_and_run_auto(
    local_cluster: LocalCluster,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    local_cluster.start(1)
    endpoint = local_cluster.workers[0].endpoint
    assert main(["plan", str(tiny_model), "--worker", endpoint, "--auto", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    planner = data["planner"]
    assert planner["verdict"] in ("local", "sharded")
    assert "predicted" in captured.err and "plan:" in captured.err
    if planner["verdict"] == "local":
        assert "run it locally" in captured.err
    layers = [row["layers"] for row in data["stages"]]
    assert [s["layers"] for s in planner["stages"]] == layers
    report = tmp_path / "r.json"
    argv = ["run", str(tiny_model), "--worker", endpoint, "--auto", "-p", "hi", "-n", "6"]
    assert main([*argv, "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "planner predicted" in err and "tokens/s" in err
    assert json.loads(report.read_text())["planner"]["predicted_tps"] > 0
    assert main([*argv, "--split", "1,4"]) == 1
    assert "--auto or --split" in capsys.readouterr().err


def test_explain_any_plan_over_measured_profile(tiny_model: Path) -> None:
    from quorum_tui.engine.planner import ClusterProfile, StageProfile

    info = inspect_model(tiny_model)
    profile = ClusterProfile(
        StageProfile("coordinator", None, 0.001, 0.0005),
        (StageProfile("w1", "127.0.0.1:1", 0.002, 0.001, 1e8),),
    )
    plan = LayerPlan.from_counts(5, [2, 3], [WorkerRef("w1", "127.0.0.1:1")])
    result = explain(info, 512, profile, plan)
    expected = 0.0005 + 2 * 0.001 + 3 * 0.002 + 0.001
    assert result.per_token_s > expected
    assert result.bottleneck == "w1"
    assert any("bottleneck: w1" in line for line in result.lines())
