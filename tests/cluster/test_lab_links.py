"""The lab's links behave like a LAN: a delay each way, a rate limit, SSH and tunnels on top.

Every timing check is a lower bound on a median (or on a whole transfer): a loaded machine
only makes round trips longer, never shorter than the link's delay.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.engine.measure import link_rtt
from quorum_tui.engine.probe import probe_async
from quorum_tui.lab.sshlab import LabHost, SshLab

from .helpers import quorum, up

CLOSED_PORT = 9
PING = f"""
import socket, statistics, sys, time
times = []
for _ in range(15):
    started = time.perf_counter()
    try:
        socket.create_connection((sys.argv[1], {CLOSED_PORT}), timeout=10).close()
    except ConnectionRefusedError:
        times.append(time.perf_counter() - started)
if len(times) < 15:
    sys.exit(f"port {CLOSED_PORT} of {{sys.argv[1]}} did not refuse every connect")
print(statistics.median(times))
"""


def tcp_rtt(address: str, source: LabHost | None = None) -> float:
    """Median seconds of a TCP SYN answered by a RST (a closed port: no process on the host
    involved), from this machine or from `source`'s namespace."""
    cmd = [sys.executable, "-c", PING, address]
    done = subprocess.run(
        source.ns_cmd(*cmd) if source else cmd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def netns_only(lab: SshLab) -> None:
    assert lab.netns_mode, "shaped lab links need network namespaces: run the tests as root"


def test_delay_each_way_sets_the_round_trip(lab: SshLab) -> None:
    netns_only(lab)
    plain = lab.add("plain")
    near = lab.add("near", delay_ms=1.0)
    assert plain.link == ""
    assert "1ms" in near.link
    plain_rtt, near_rtt = tcp_rtt(plain.address), tcp_rtt(near.address)
    assert plain_rtt < 1e-3, f"an unshaped link took {plain_rtt * 1e3:.2f} ms"
    assert near_rtt >= 1.6e-3, f"{near.link}: round trip {near_rtt * 1e3:.2f} ms"


def test_lab_wide_delay_applies_to_every_link_unless_a_host_says_otherwise(
    tmp_path: Path, remote_cache: Path
) -> None:
    lab = SshLab(tmp_path / "lab", remote_cache, delay_ms=2.0)
    try:
        netns_only(lab)
        far, local = lab.add("far"), lab.add("local", delay_ms=0)
        assert "2ms" in far.link and local.link == ""
        assert tcp_rtt(far.address) >= 3.2e-3, far.link
        assert tcp_rtt(local.address) < 1e-3
        between = tcp_rtt(far.address, source=local)
        assert between >= 3.2e-3, f"{far.link}: host to host {between * 1e3:.2f} ms"
    finally:
        lab.close()


ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
conn, _ = server.accept()
size, got = int(sys.argv[3]), 0
while got < size:
    got += len(conn.recv(1 << 20))
conn.sendall(bytes(size))
conn.close()
"""


def test_rate_limit_holds_both_ways(lab: SshLab) -> None:
    netns_only(lab)
    rate_mbit, size, port = 40.0, 3 << 20, 7000
    host = lab.add("thin", rate_mbit=rate_mbit)
    assert "tbf rate 40mbit" in host.link or "rate 40mbit" in host.link
    server = subprocess.Popen(
        host.ns_cmd(sys.executable, "-c", ECHO, host.address, str(port), str(size)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        started = time.perf_counter()
        with socket.create_connection((host.address, port), timeout=30) as conn:
            conn.sendall(bytes(size))
            got = 0
            while got < size:
                chunk = conn.recv(1 << 20)
                assert chunk, "the echo server closed early"
                got += len(chunk)
        elapsed = time.perf_counter() - started
    finally:
        server.kill()
        server.wait()
    least = 2 * (size - (1 << 18)) * 8 / (rate_mbit * 1e6)
    assert elapsed >= 0.9 * least, f"{host.link}: {2 * size} bytes in {elapsed:.2f} s"


async def test_worker_through_a_delayed_link(lab: SshLab, tiny_model: Path) -> None:
    netns_only(lab)
    host = lab.add("remote", delay_ms=1.0)
    path = lab.cluster_file([host])
    cluster, _ = await up(path)
    try:
        (result,) = cluster.results
        assert result.state == "worker-up", result.reason
        assert result.tunnel is not None and result.endpoint is not None
        assert (await probe_async(result.endpoint, timeout=10)).ok
        rtt = await asyncio.to_thread(link_rtt, result.endpoint, 15)
        assert rtt >= 1.6e-3, f"{host.link}: RPC round trip through the tunnel {rtt * 1e3:.2f} ms"
    finally:
        await cluster.close()
    single = quorum("run", str(tiny_model), "-p", "far away", "-n", "8")
    sharded = quorum(
        "run", "--cluster", str(path), str(tiny_model), "-p", "far away", "-n", "8",
        "--split", "2,3",
    )  # fmt: skip
    await down(load_inventory(path))
    assert single.returncode == 0, single.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert sharded.stdout == single.stdout and sharded.stdout.strip()


def test_bench_lab_hosts_take_the_delay() -> None:
    done = quorum(
        "bench", "tunnel", "--lab", "1", "--delay-ms", "1", "--rounds", "1", "-n", "4",
        "--skip-nagle", "--json", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rtt = json.loads(done.stdout)["rtt_us"]
    assert rtt["direct"] >= 1600 and rtt["openssh"] >= 1600, rtt


def test_bench_refuses_to_shape_a_cluster_file(tmp_path: Path) -> None:
    done = quorum("bench", "bringup", "--cluster", str(tmp_path / "c.toml"), "--delay-ms", "1")
    assert done.returncode == 1
    assert "--lab hosts only" in done.stderr and "Traceback" not in done.stderr
