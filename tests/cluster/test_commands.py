"""A bring-up costs one remote command when the runtime is current (each command is a login
shell on the host), whether it starts the worker or reuses it."""

from __future__ import annotations

from typing import Any

import pytest

from quorum_tui.cluster import bringup
from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.cluster.sessions import HostSession
from quorum_tui.engine.probe import probe_async
from quorum_tui.lab.sshlab import SshLab

from .helpers import pid_alive, up


def count_commands(patch: pytest.MonkeyPatch) -> list[str]:
    commands: list[str] = []
    run, stream = HostSession.run, HostSession.stream

    async def counted_run(self: HostSession, command: str, **kw: Any) -> Any:
        commands.append(command)
        return await run(self, command, **kw)

    async def counted_stream(self: HostSession, command: str, *args: Any, **kw: Any) -> Any:
        commands.append(command)
        return await stream(self, command, *args, **kw)

    patch.setattr(HostSession, "run", counted_run)
    patch.setattr(HostSession, "stream", counted_stream)
    return commands


async def test_one_remote_command_starts_or_reuses_a_worker(
    lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = lab.add("lean")
    path = lab.cluster_file([host])
    inv = load_inventory(path)
    installed, _ = await up(path)
    await installed.close()
    assert installed.results[0].state == "worker-up", installed.results[0].reason
    await down(inv)

    with monkeypatch.context() as patch:
        commands = count_commands(patch)
        started, events = await up(path)
    try:
        (result,) = started.results
        assert result.state == "worker-up", result.reason
        assert "started the worker" in result.reason and not result.reused
        assert len(commands) == 1, commands
        assert result.facts is not None and result.facts.runtime_ok
        assert any("runtime 7.0.0" in e.reason for e in events if e.state == "connected")
        assert result.pid is not None and pid_alive(result.pid)
        assert (await probe_async(result.ref.endpoint, timeout=5)).ok
    finally:
        await started.close()

    with monkeypatch.context() as patch:
        commands = count_commands(patch)
        reused, _ = await up(path)
    await reused.close()
    assert reused.results[0].state == "worker-up" and reused.results[0].reused
    assert reused.results[0].pid == result.pid
    assert len(commands) == 1, commands
    await down(inv)
    assert not pid_alive(result.pid)


async def test_close_lets_a_fresh_tunnel_settle_before_hanging_up(
    lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tunnel's remote login shell may still be reading rc files: close waits it out."""
    host = lab.add("fresh")
    path = lab.cluster_file([host])
    cluster, _ = await up(path)
    (result,) = cluster.results
    assert result.state == "worker-up", result.reason
    assert result.tunnel is not None and result.tunnel.process is not None
    process = result.tunnel.process
    seen: list[tuple[float, bool]] = []
    settle = bringup._settle

    async def watched(opened: float) -> None:
        seen.append((opened, process.returncode is None))
        await settle(opened)

    monkeypatch.setattr(bringup, "_settle", watched)
    opened = result.tunnel_opened
    await cluster.close()
    assert seen == [(opened, True)] and opened > 0
    assert process.returncode is not None
    await down(load_inventory(path))
