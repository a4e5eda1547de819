"""Each fault is a test: the bad host gets its state and reason, the others come up."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

from quorum_tui.cluster.bringup import check, down
from quorum_tui.cluster.events import HostKeyQuestion
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.lab.sshlab import SshLab

from .helpers import pid_alive, quorum, states, up


async def test_wrong_key_is_auth_failed(lab: SshLab, tiny_model: Path) -> None:
    good, bad = lab.add("good"), lab.add("badkey")
    path = lab.cluster_file([good, bad], extra={"badkey": {"identity_file": str(lab.wrong_key)}})
    cluster, _ = await up(path)
    await cluster.close()
    assert states(cluster) == {"good": "worker-up", "badkey": "auth-failed"}
    assert "refused the login" in cluster.results[1].reason
    assert str(lab.wrong_key) in cluster.results[1].reason
    run = quorum("run", "--cluster", str(path), str(tiny_model), "-p", "x", "-n", "2")
    assert run.returncode == 1
    assert "quorum: not every host came up: badkey is auth-failed: " in run.stderr
    assert "Traceback" not in run.stderr
    await down(load_inventory(path))


async def test_host_down_is_unreachable_within_the_timeout(lab: SshLab) -> None:
    live, dead = lab.add("live"), lab.add("dead")
    dead.link_down()
    path = lab.cluster_file([live, dead], connect_timeout=2)
    cluster, events = await up(path)
    await cluster.close()
    assert states(cluster) == {"live": "worker-up", "dead": "unreachable"}
    reason = cluster.results[1].reason
    assert dead.address in reason or "2s" in reason
    assert [e.state for e in events if e.host == "dead" and e.line is None] == [
        "connecting",
        "unreachable",
    ]
    await down(load_inventory(path))


async def test_changed_host_key_is_refused(lab: SshLab) -> None:
    host = lab.add("moved")
    host.new_host_key()
    before = lab.known_hosts.read_text()
    asked: list[HostKeyQuestion] = []

    async def yes(question: HostKeyQuestion) -> bool:
        asked.append(question)
        return True

    cluster, _ = await up(lab.cluster_file([host]), prompt=yes, accept_new_host_keys=True)
    await cluster.close()
    (result,) = cluster.results
    assert result.state == "host-key-changed"
    assert "differs" in result.reason and "ssh-keygen -R" in result.reason
    assert asked == []
    assert lab.known_hosts.read_text() == before


async def test_unknown_host_key_needs_a_yes(lab: SshLab) -> None:
    host = lab.add("fresh", known=False)
    path = lab.cluster_file([host])
    refused, _ = await up(path)
    await refused.close()
    assert refused.results[0].state == "host-key-unknown"
    assert "--accept-new-host-keys" in refused.results[0].reason
    assert lab.known_hosts.read_text() == ""

    asked: list[HostKeyQuestion] = []

    async def no(question: HostKeyQuestion) -> bool:
        asked.append(question)
        return False

    declined, _ = await up(path, prompt=no)
    await declined.close()
    assert declined.results[0].state == "host-key-unknown"
    assert asked[0].host == "fresh" and asked[0].fingerprint.startswith("SHA256:")
    assert asked[0].known_hosts == str(lab.known_hosts)

    async def yes(question: HostKeyQuestion) -> bool:
        return True

    accepted, _ = await up(path, prompt=yes)
    await accepted.close()
    assert accepted.results[0].state == "worker-up", accepted.results[0].reason
    assert host.known_hosts_line().split()[1:] == lab.known_hosts.read_text().split()[1:]
    await down(load_inventory(path))


async def test_killed_worker_is_worker_down_and_up_restarts_it(lab: SshLab) -> None:
    hosts = [lab.add("steady"), lab.add("victim")]
    path = lab.cluster_file(hosts)
    inv = load_inventory(path)
    first, _ = await up(path)
    await first.close()
    victim = first.results[1]
    assert victim.state == "worker-up" and victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    while pid_alive(victim.pid):
        pass
    checked = await check(inv)
    await checked.close()
    assert states(checked) == {"steady": "worker-up", "victim": "worker-down"}
    again = quorum("up", "--config", str(path), "--no-wait")
    assert again.returncode == 0, again.stderr
    assert "victim: worker-up: started the worker" in again.stderr
    assert "steady: worker-up: reused the running worker" in again.stderr
    rechecked = await check(inv)
    await rechecked.close()
    assert states(rechecked) == {"steady": "worker-up", "victim": "worker-up"}
    assert rechecked.results[1].pid != victim.pid
    assert rechecked.results[0].pid == first.results[0].pid
    await down(inv)


async def test_worker_that_cannot_start_shows_the_remote_log(lab: SshLab) -> None:
    host = lab.add("clash")
    path = lab.cluster_file([host], extra={"clash": {"rpc_server": "/bin/false"}})
    cluster, _ = await up(path)
    await cluster.close()
    (result,) = cluster.results
    assert result.state == "worker-down"
    assert "exited at start" in result.reason and "worker-" in result.reason


async def test_configured_rpc_server_binary_is_used(lab: SshLab, tmp_path: Path) -> None:
    shim = tmp_path / "rpc-server"
    shim.write_text(
        f"#!/bin/sh\n# upstream flags: -H HOST -p PORT -c [-t N]\n"
        f'exec {sys.executable} -m quorum_tui.cluster.agent --host "$2" --port "$4"\n'
    )
    shim.chmod(0o755)
    host = lab.add("binary")
    path = lab.cluster_file([host], extra={"binary": {"rpc_server": str(shim)}})
    cluster, events = await up(path)
    await cluster.close()
    (result,) = cluster.results
    assert result.state == "worker-up", result.reason
    assert not any(e.state == "installing" for e in events)
    assert result.pid is not None
    cmdline = Path(f"/proc/{result.pid}/cmdline").read_bytes().split(b"\0")
    assert b"quorum_tui.cluster.agent" in cmdline
    assert str(_rpc_port(path)).encode() in cmdline
    down_result = await down(load_inventory(path))
    assert down_result.results[0].reason == "worker stopped"
    assert not pid_alive(result.pid)


def _rpc_port(path: Path) -> int:
    return load_inventory(path).hosts[0].rpc_port


def test_cli_asks_about_an_unknown_host_key_on_a_terminal(lab: SshLab) -> None:
    host = lab.add("asked", known=False)
    path = lab.cluster_file([host])
    for answer, state in ((b"n\n", "host-key-unknown"), (b"y\n", "worker-down")):
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "quorum_tui", "hosts", "check", "--config", str(path)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        assert proc.stdout is not None
        seen = b""
        while b"[y/N]" not in seen:
            chunk = proc.stdout.read1(4096)
            assert chunk, seen
            seen += chunk
        assert b"asked: the authenticity of " + host.address.encode() in seen
        assert b"SHA256:" in seen and str(lab.known_hosts).encode() in seen
        os.write(master, answer)
        out, _ = proc.communicate(timeout=60)
        os.close(master)
        assert f"asked            {state}".encode() in out
    assert lab.known_hosts.read_text().split()[1:] == host.known_hosts_line().split()[1:]
