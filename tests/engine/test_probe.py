"""Probing workers: ok, busy, incompatible and unreachable, told apart."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.probe import PROTOCOL, compatible, probe
from quorum_tui.errors import QuorumError
from tests.fakerpc import fake_rpc_server

from .conftest import QuorumRunner


def test_real_worker_is_ok(shared_workers: LocalCluster) -> None:
    result = probe(shared_workers.workers[0].endpoint)
    assert result.status == "ok", result.reason
    assert result.version == PROTOCOL
    assert len(result.devices) == 1
    assert 0 < result.free <= result.total
    assert result.rtt_ms is not None


def test_worker_serving_a_coordinator_is_busy(shared_workers: LocalCluster) -> None:
    endpoint = shared_workers.workers[1].endpoint
    host, port = endpoint.split(":")
    holder = socket.create_connection((host, int(port)))
    try:
        holder.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
        assert len(holder.recv(64)) > 0
        result = probe(endpoint, timeout=1.0)
        assert result.status == "busy"
        assert "another coordinator" in result.reason
    finally:
        holder.close()
    assert probe(endpoint).ok


def test_unreachable_port() -> None:
    result = probe(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert result.status == "unreachable"
    assert "connection refused" in result.reason


def test_other_protocol_version_is_incompatible_and_named() -> None:
    with fake_rpc_server((6, 1, 0)) as endpoint:
        result = probe(endpoint)
    assert result.status == "incompatible"
    assert "6.1.0" in result.reason and "7.0.0" in result.reason


def test_newer_minor_version_is_incompatible() -> None:
    assert compatible((7, 0, 3))
    assert not compatible((7, 1, 0))
    with fake_rpc_server((7, 1, 0)) as endpoint:
        assert probe(endpoint).status == "incompatible"


def test_same_version_fake_is_ok() -> None:
    with fake_rpc_server(PROTOCOL) as endpoint:
        result = probe(endpoint)
    assert result.ok
    assert result.free == 1 << 30 and result.total == 2 << 30


def test_server_closing_at_hello_is_incompatible() -> None:
    with fake_rpc_server(behaviour="close") as endpoint:
        result = probe(endpoint)
    assert result.status == "incompatible"
    assert "closed the connection" in result.reason


def test_silent_server_is_busy() -> None:
    with fake_rpc_server(behaviour="silent") as endpoint:
        assert probe(endpoint, timeout=0.5).status == "busy"


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:x", ":50052", "h:0", "h:70000"])
def test_malformed_endpoints(bad: str) -> None:
    with pytest.raises(QuorumError):
        probe(bad)


def test_probe_cli(quorum: QuorumRunner, shared_workers: LocalCluster) -> None:
    good = shared_workers.workers[2].endpoint
    dead = f"127.0.0.1:{free_port()}"
    with fake_rpc_server((6, 0, 0)) as old:
        shown = quorum("probe", good, dead, old, "--json", "--timeout", "2")
    assert shown.returncode == 1
    rows = {r["endpoint"]: r for r in json.loads(shown.stdout)}
    assert rows[good]["status"] == "ok" and rows[good]["version"] == "7.0.0"
    assert rows[dead]["status"] == "unreachable"
    assert rows[old]["status"] == "incompatible" and rows[old]["version"] == "6.0.0"
    human = quorum("probe", good)
    assert human.returncode == 0 and "ok: protocol 7.0.0" in human.stdout
