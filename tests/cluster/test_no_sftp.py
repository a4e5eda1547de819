"""Hosts whose sshd has no SFTP subsystem get Quorum's code over an exec channel, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.cluster.runtime import upload
from quorum_tui.cluster.sessions import connect
from quorum_tui.engine.probe import probe_async
from quorum_tui.lab.sshlab import SshLab

from .helpers import states, up


async def test_upload_takes_sftp_where_there_is_one_and_exec_elsewhere(
    lab: SshLab, tmp_path: Path
) -> None:
    with_sftp, without = lab.add("sftp"), lab.add("bare", sftp=False)
    inv = load_inventory(lab.cluster_file([with_sftp, without]))
    data = bytes(range(256)) * 4000
    for host, channel in (("sftp", "sftp"), ("bare", "exec")):
        session = await connect(inv, inv.host(host))
        lines: list[str] = []
        try:
            if channel == "exec":
                with pytest.raises(asyncssh.Error):
                    async with session.conn.start_sftp_client():
                        pass
            target = tmp_path / host / "sub" / "blob.bin"
            assert await upload(session, str(target), data, lines.append) == channel
        finally:
            await session.close()
        assert target.read_bytes() == data
        assert not Path(f"{target}.part").exists()
        assert any("exec channel" in line for line in lines) == (channel == "exec"), lines


async def test_host_without_sftp_gets_the_runtime_and_its_worker(
    lab: SshLab, tmp_path: Path
) -> None:
    cache = tmp_path / "bare-cache"
    host = lab.add("bare", sftp=False, env={"QUORUM_CACHE_DIR": str(cache)})
    path = lab.cluster_file([host])
    cluster, events = await up(path)
    try:
        (result,) = cluster.results
        assert result.state == "worker-up", result.reason
        lines = [e.line for e in events if e.line]
        assert any("over an exec channel" in line for line in lines), lines
        assert any("runtime ready" in line for line in lines), lines
        assert result.endpoint is not None
        assert (await probe_async(result.endpoint, timeout=10)).ok
    finally:
        await cluster.close()
        await down(load_inventory(path))
    assert not list(cache.rglob("upload-*")), "the tarball is unpacked, then removed"


async def test_a_corrupted_stream_is_caught_and_leaves_nothing(
    lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "garbled-cache"
    host = lab.add("garbled", sftp=False, env={"QUORUM_CACHE_DIR": str(cache)})
    real_run = asyncssh.SSHClientConnection.run

    async def garbling_run(self: asyncssh.SSHClientConnection, *args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("input")
        if isinstance(data, bytes):
            kwargs["input"] = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
        return await real_run(self, *args, **kwargs)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "run", garbling_run)
    cluster, events = await up(lab.cluster_file([host]))
    await cluster.close()
    (result,) = cluster.results
    assert result.state == "worker-down"
    assert "did not arrive intact" in result.reason and "sha256" in result.reason, result.reason
    assert "nothing was installed" in result.reason
    assert any("over an exec channel" in e.line for e in events if e.line)
    left = [p.name for p in cache.rglob("*") if p.is_file()]
    assert not [name for name in left if name.startswith("upload-")], left
    assert "runtime.json" not in left


async def test_both_channels_failing_says_what_to_fix(lab: SshLab, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    host = lab.add("stuck", sftp=False, env={"QUORUM_CACHE_DIR": str(blocker / "cache")})
    cluster, _ = await up(lab.cluster_file([host]))
    await cluster.close()
    assert states(cluster) == {"stuck": "worker-down"}
    reason = cluster.results[0].reason
    assert "cannot upload Quorum's code" in reason, reason
    assert "SFTP failed" in reason and "exec channel" in reason
    assert "Not a directory" in reason and "writable" in reason
