"""Local port forwards to workers over SSH, with Nagle off on every hop.

Two clients carry the forward, the host's asyncssh connection or OpenSSH's `ssh`:

- asyncssh: coordinator -> 127.0.0.1:<local> (asyncssh sets TCP_NODELAY on each accepted
  socket) -> sshd (asyncssh sets TCP_NODELAY on its SSH socket) -> the worker on the host's
  loopback (the worker sets TCP_NODELAY on its side). OpenSSH's sshd sets TCP_NODELAY on its
  SSH socket when the connection's first session starts (`ssh_packet_set_interactive`; old
  versions only for a pty session) and never for forwards alone, which is why `ssh -N -L` is
  slow: bring-up's first command, the host probe, therefore runs with a pty.
- OpenSSH (`tunnel_client = "openssh"`, the default when `ssh` is installed): `ssh -tt -L`
  running `exec cat` in a pty, so both the client and sshd treat the connection as
  interactive and set TCP_NODELAY. Its data path is C rather than Python: on a busy 2-core
  machine it kept ~0.9 of the direct speed where asyncssh kept ~0.5-0.6 (`quorum bench
  tunnel`). It authenticates like the asyncssh connection (same ssh config, user, port, key)
  in batch mode against known_hosts, which bring-up has already checked; if it cannot, the
  asyncssh forward is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from dataclasses import dataclass, field

import asyncssh

from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.inventory import Inventory
from quorum_tui.cluster.sessions import HostSession, known_hosts_files, ssh_config_paths
from quorum_tui.engine.localcluster import free_port

OPENSSH_READY_TIMEOUT = 20.0


@dataclass
class Tunnel:
    host: str
    local_port: int
    remote_port: int
    client: str
    listener: asyncssh.SSHListener | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.local_port}"

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def aclose(self) -> None:
        """Close, and wait for an `ssh` child to be gone."""
        self.close()
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)


async def open_tunnel(
    session: HostSession, remote_port: int, local_port: int = 0, remote_host: str = "127.0.0.1"
) -> Tunnel:
    """Forward 127.0.0.1:<local_port or a free port> to <remote_host>:<remote_port> on the host
    over the session's asyncssh connection."""
    try:
        listener = await session.conn.forward_local_port(
            "127.0.0.1", local_port, remote_host, remote_port
        )
    except (asyncssh.Error, OSError) as exc:
        raise HostFailure("worker-down", f"cannot open the SSH tunnel: {exc}") from None
    return Tunnel(session.host.name, listener.get_port(), remote_port, "asyncssh", listener)


ALIVE_INTERVAL = 5
"""Seconds between the OpenSSH tunnel's keepalives (three missed ones end it)."""


def openssh_command(
    inv: Inventory, session: HostSession, local_port: int, remote_host: str, remote_port: int
) -> list[str]:
    host = session.host
    cmd = ["ssh", "-tt", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    cmd += ["-o", "StrictHostKeyChecking=yes"]
    # A host cut off the network ends the tunnel within about 15 s, so its port then refuses
    # connections and the coordinator's watchdog can name it.
    cmd += ["-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", "ServerAliveCountMax=3"]
    known = [f for f in known_hosts_files(inv, host) if os.path.isfile(f)]
    if known:
        cmd += ["-o", "UserKnownHostsFile=" + " ".join(known)]
    config = ssh_config_paths(inv)
    if inv.ssh_config and config:
        cmd += ["-F", config[0]]
    if host.user:
        cmd += ["-l", host.user]
    if host.port:
        cmd += ["-p", str(host.port)]
    if host.identity_file:
        cmd += ["-i", os.path.expanduser(host.identity_file)]
    cmd += ["-L", f"127.0.0.1:{local_port}:{remote_host}:{remote_port}"]
    return [*cmd, host.address, "exec cat"]


async def open_openssh_tunnel(
    inv: Inventory,
    session: HostSession,
    remote_port: int,
    local_port: int = 0,
    remote_host: str = "127.0.0.1",
) -> Tunnel:
    """The same forward through an `ssh -tt -L` child; HostFailure if it does not come up."""
    if shutil.which("ssh") is None:
        raise HostFailure("worker-down", "no OpenSSH client (`ssh`) on this machine")
    port = local_port or free_port()
    cmd = openssh_command(inv, session, port, remote_host, remote_port)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    tunnel = Tunnel(session.host.name, port, remote_port, "openssh", process=proc)
    deadline = time.monotonic() + OPENSSH_READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        if await asyncio.to_thread(_accepts, port):
            return tunnel
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    tunnel.close()
    err = b""
    if proc.stderr is not None:
        with contextlib.suppress(TimeoutError):
            err = await asyncio.wait_for(proc.stderr.read(), 2)
    await proc.wait()
    lines = err.decode(errors="replace").strip().splitlines()
    raise HostFailure(
        "worker-down",
        f"`ssh -L` did not come up (exit {proc.returncode}): {' | '.join(lines[-2:]) or '-'}",
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
