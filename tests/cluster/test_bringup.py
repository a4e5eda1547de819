"""Bring-up over real sshd hosts: parallel, through tunnels, identical output, idempotent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.engine.localcluster import free_port
from quorum_tui.engine.probe import probe, probe_async
from quorum_tui.lab.sshlab import SshLab

from .helpers import pid_alive, quorum, states, up

PROMPT = "Three hosts agree"


def test_three_hosts_run_matches_single_process(lab: SshLab, tiny_model: Path) -> None:
    hosts = [lab.add(f"node{i}") for i in range(3)]
    cluster_file = lab.cluster_file(hosts)
    single = quorum("run", str(tiny_model), "-p", PROMPT, "-n", "24")
    assert single.returncode == 0, single.stderr
    report = lab.root / "report.json"
    sharded = quorum(
        "run", "--cluster", str(cluster_file), str(tiny_model), "-p", PROMPT, "-n", "24",
        "--split", "2,1,1,1", "--report", str(report),
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr
    assert sharded.stdout == single.stdout
    assert sharded.stdout.strip()
    stages = json.loads(report.read_text())["stages"]
    assert [s["name"] for s in stages] == ["coordinator", "node0", "node1", "node2"]
    assert [s["layers"] for s in stages] == [[0, 1], [2, 2], [3, 3], [4, 4]]
    assert all(s["endpoint"].startswith("127.0.0.1:") for s in stages[1:])
    for host in hosts:
        assert f"{host.name}: worker-up" in sharded.stderr
    # the workers outlive the run; `quorum down` stops them and nothing else
    inv = load_inventory(cluster_file)
    pids = [
        int((lab.remote_cache / "workers" / f"worker-{h.rpc_port}.pid").read_text())
        for h in inv.hosts
    ]
    assert all(pid_alive(p) for p in pids)
    stopped = quorum("down", "--config", str(cluster_file))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count("worker stopped") == 3
    assert not any(pid_alive(p) for p in pids)
    again = quorum("down", "--config", str(cluster_file))
    assert again.stdout.count("no worker that Quorum started was running") == 3


async def test_tunnel_port_is_closed_to_other_namespaces(lab: SshLab, tiny_model: Path) -> None:
    a, b = lab.add("alpha"), lab.add("beta")
    path = lab.cluster_file([a, b], tunnel_client="asyncssh")
    inv = load_inventory(path)
    cluster, _ = await up(path)
    try:
        assert states(cluster) == {"alpha": "worker-up", "beta": "worker-up"}
        assert [r.tunnel.client for r in cluster.results if r.tunnel] == ["asyncssh"] * 2
        rpc_port = inv.host("alpha").rpc_port
        reach = (
            "import socket, sys\n"
            "def dial(port):\n"
            "    try:\n"
            f"        socket.create_connection(({a.address!r}, port), timeout=3).close()\n"
            "        return 'open'\n"
            "    except OSError as exc:\n"
            "        return type(exc).__name__\n"
            f"print(dial({a.port}), dial({rpc_port}))\n"
        )
        out = subprocess.run(
            b.ns_cmd(sys.executable, "-c", reach), capture_output=True, text=True, check=True
        ).stdout.split()
        if lab.netns_mode:
            assert out == ["open", "ConnectionRefusedError"]
        else:
            assert out[0] == "open"
        if lab.netns_mode:
            direct = await probe_async(f"{a.address}:{rpc_port}", timeout=2)
            assert direct.status == "unreachable"
        tunnelled = await probe_async(cluster.results[0].ref.endpoint, timeout=5)
        assert tunnelled.ok and tunnelled.version == (7, 0, 0)

        from quorum_tui.deploy.deployment import Deployment, Prepared
        from quorum_tui.engine.completion import CompletionRequest
        from quorum_tui.engine.gguf_info import inspect_model
        from quorum_tui.engine.plan import LayerPlan

        plan = LayerPlan.from_counts(5, [1, 2, 2], cluster.workers)
        async with Deployment() as deployment:
            await deployment.start(Prepared(tiny_model, inspect_model(tiny_model), plan))
            result = await deployment.run(
                CompletionRequest("tunnel", 8, extra={"ignore_eos": True})
            )
        assert result.done.completion_tokens == 8
        assert list(result.realized) == [0, 1, 1, 2, 2, 2]
    finally:
        await cluster.close()
        await down(inv)


async def test_bring_up_is_idempotent(
    lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = [lab.add("one"), lab.add("two")]
    path = lab.cluster_file(hosts)
    first, _ = await up(path)
    assert [r.tunnel.client for r in first.results if r.tunnel] == ["openssh"] * 2
    assert all(r.warnings == [] for r in first.results)
    await first.close()
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        second, events = await up(path)
    clients = [r.tunnel.client for r in second.results if r.tunnel]
    await second.close()
    assert [r.state for r in second.results] == ["worker-up", "worker-up"]
    assert all(r.reused for r in second.results)
    assert [r.pid for r in second.results] == [r.pid for r in first.results]
    assert not any(e.state == "installing" for e in events)
    assert clients == ["asyncssh"] * 2
    assert "no OpenSSH client" in second.results[0].warnings[0]
    await down(load_inventory(path))


async def test_direct_transport_binds_the_host_address_and_warns(lab: SshLab) -> None:
    host = lab.add("plain")
    path = lab.cluster_file([host], transport="direct")
    cluster, _ = await up(path)
    try:
        (result,) = cluster.results
        assert result.state == "worker-up", result.reason
        assert result.endpoint == f"{host.address}:{load_inventory(path).hosts[0].rpc_port}"
        assert result.tunnel is None
        assert "no authentication" in result.warnings[0]
        assert (await probe_async(result.endpoint, timeout=5)).ok
    finally:
        await cluster.close()
        await down(load_inventory(path))


def test_up_cli_holds_tunnels_and_hosts_check_reports_workers(lab: SshLab) -> None:
    hosts = [lab.add("c1"), lab.add("c2")]
    path = lab.cluster_file(hosts)
    holder = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui", "up", "--config", str(path), "--interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdout is not None
        lines: list[str] = []
        while not lines or "holding the tunnels" not in lines[-1]:
            line = holder.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        summary = [line.split() for line in lines if line.startswith(("c1 ", "c2 "))]
        assert [(row[0], row[1]) for row in summary] == [("c1", "worker-up"), ("c2", "worker-up")]
        endpoints = [row[2] for row in summary]
        assert all(probe(e, timeout=5).ok for e in endpoints)
        # a worker killed while `up` holds the tunnels is restarted behind the same endpoint
        victim = int(re.search(r"\(pid (\d+)\)", " ".join(summary[1]))[1])
        os.kill(victim, signal.SIGKILL)
        while "c2: worker-up: started the worker" not in lines[-1]:
            line = holder.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert any(line.startswith("c2: worker-down: the worker process is gone") for line in lines)
        assert probe(endpoints[1], timeout=5).ok
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(30)
    assert holder.returncode == 130
    assert all(probe(e, timeout=2).status == "unreachable" for e in endpoints)

    done = quorum("up", "--config", str(path), "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["state"], r["reused"]) for r in rows] == [("worker-up", True)] * 2
    assert rows[0]["facts"]["cores"] >= 1 and rows[0]["facts"]["runtime_ok"]
    check = quorum("hosts", "check", "--config", str(path), "--watch", "--count", "1", "--json")
    assert check.returncode == 0, check.stderr
    hosts_report, end = json.JSONDecoder().raw_decode(check.stdout)
    assert [(r["name"], r["state"]) for r in hosts_report] == [
        ("c1", "worker-up"),
        ("c2", "worker-up"),
    ]
    assert [r["pid"] for r in hosts_report] == [r["pid"] for r in rows]
    rounds = json.loads(check.stdout[end:])
    assert [s["host"] for s in rounds] == ["coordinator", "c1", "c2"]
    assert all(s["error"] is None and s["mem_total"] > s["mem_available"] > 0 for s in rounds)
    assert all(0 <= s["cpu_percent"] <= 100 for s in rounds)
    assert quorum("down", "--config", str(path)).returncode == 0


def test_serve_with_cluster_keeps_tunnels_in_the_same_loop(lab: SshLab, tiny_model: Path) -> None:
    host = lab.add("srv")
    path = lab.cluster_file([host])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum_tui", "serve", "--cluster", str(path), str(tiny_model),
         "--port", str(port), "--split", "2,3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        while not any("serving OpenAI-compatible API" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"serve exited: {proc.communicate()[1]}"
            lines.append(line)
        base = f"http://127.0.0.1:{port}"
        plan = httpx.get(f"{base}/quorum/plan", timeout=30).json()
        assert "srv" in json.dumps(plan) and "127.0.0.1:" in json.dumps(plan)
        done = httpx.post(
            f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=60
        )
        assert done.status_code == 200 and done.json()["choices"][0]["text"] is not None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        quorum("down", "--config", str(path))
