"""SSH connections to hosts (asyncssh): ssh config, known_hosts and ssh-agent honoured.

A host key that known_hosts does not have is never accepted silently: the caller's prompt
decides, and an accepted key is appended to known_hosts before reconnecting. A key that
differs from the one known_hosts has is refused outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.config import SSHClientConfig

from quorum_tui.cluster.events import HostFailure, HostKeyPrompt, HostKeyQuestion
from quorum_tui.cluster.inventory import HostConfig, Inventory
from quorum_tui.logs import logged

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
FAST_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]
"""AES-GCM first: one AEAD call per packet, the cheapest in asyncssh for small RPC messages."""


@dataclass
class HostSession:
    """An open SSH connection to one host."""

    host: HostConfig
    conn: asyncssh.SSHClientConnection

    @property
    def peer_ip(self) -> str:
        peer = self.conn.get_extra_info("peername")
        return str(peer[0]) if peer else self.host.address

    async def run(
        self, command: str, *, input: str | None = None, timeout: float = 30.0, pty: bool = False
    ) -> asyncssh.SSHCompletedProcess:
        """Run a command and wait; never raises for a non-zero exit status.

        With `pty` the command gets a terminal (stderr then arrives on stdout, lines end in
        CRLF), which makes sshd treat the connection as interactive: see `tunnels`.
        """
        extra: dict[str, Any] = {"term_type": "dumb"} if pty else {}
        with command_failures(timeout):
            return await asyncio.wait_for(
                self.conn.run(command, input=input, check=False, **extra), timeout
            )

    async def stream(
        self, command: str, on_line: Callable[[str], None], timeout: float = 1800.0
    ) -> tuple[int, list[str]]:
        """Run a command, passing each output line (stdout and stderr merged) to `on_line`."""
        lines: list[str] = []

        async def pump() -> int:
            async with self.conn.create_process(
                command, stderr=asyncssh.STDOUT, stdin=asyncssh.DEVNULL
            ) as proc:
                async for raw in proc.stdout:
                    line = raw.rstrip("\n")
                    lines.append(line)
                    del lines[:-200]
                    on_line(line)
                await proc.wait()
                return proc.returncode if proc.returncode is not None else 255

        with command_failures(timeout):
            return await asyncio.wait_for(pump(), timeout), lines

    async def close(self) -> None:
        self.conn.close()
        with logged(log, f"closing the SSH connection to {self.host.name}", level=logging.INFO):
            await asyncio.wait_for(self.conn.wait_closed(), 5)


def ssh_config_paths(inv: Inventory) -> list[str]:
    if inv.ssh_config:
        return [os.path.expanduser(inv.ssh_config)]
    default = os.path.expanduser("~/.ssh/config")
    return [default] if os.access(default, os.R_OK) else []


def known_hosts_files(inv: Inventory, host: HostConfig) -> list[str]:
    """The inventory's known_hosts, else ssh config's UserKnownHostsFile, else the default."""
    if inv.known_hosts:
        return [os.path.expanduser(inv.known_hosts)]
    config = SSHClientConfig.load(
        None,
        ssh_config_paths(inv),
        False,
        False,
        False,
        getpass.getuser(),
        host.user or (),
        host.address,
        host.port or (),
    )
    files = config.get("UserKnownHostsFile") or [DEFAULT_KNOWN_HOSTS]
    return [os.path.expanduser(str(f)) for f in files]  # type: ignore[attr-defined]


class _KeyCatcher(asyncssh.SSHClient):
    """Remembers the host key the server offered when known_hosts did not trust it."""

    def __init__(self) -> None:
        self.offered: tuple[str, str, int | None, asyncssh.SSHKey] | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = (host, addr, None if port in (None, 22) else port, key)
        return False


def _factory(catcher: _KeyCatcher) -> Callable[[], _KeyCatcher]:
    return lambda: catcher


def _pattern(host: str, port: int | None) -> str:
    return host if port is None else f"[{host}]:{port}"


def _known_keys(files: list[str], host: str, addr: str, port: int | None) -> list[Any]:
    keys: list[Any] = []
    for file in files:
        if os.path.isfile(file):
            try:
                keys += asyncssh.read_known_hosts(file).match(host, addr, port)[0]
            except (ValueError, OSError):
                continue
    return keys


def _read_known_hosts(files: list[str]) -> asyncssh.SSHKnownHosts:
    text = ""
    for file in files:
        with contextlib.suppress(OSError):
            text += Path(file).read_text() + "\n"
    try:
        return asyncssh.import_known_hosts(text)
    except ValueError as exc:
        raise HostFailure("host-key-changed", f"cannot read {', '.join(files)}: {exc}") from None


def trust_host_key(file: str, host: str, port: int | None, key: asyncssh.SSHKey) -> None:
    """Append a host key to a known_hosts file, as `ssh` does after the user says yes."""
    path = Path(file)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = key.export_public_key("openssh").decode().split()
    with path.open("a") as out:
        out.write(f"{_pattern(host, port)} {line[0]} {line[1]}\n")


async def connect(
    inv: Inventory,
    host: HostConfig,
    prompt: HostKeyPrompt | None = None,
    timeout: float | None = None,
) -> HostSession:
    """Open a connection or raise HostFailure with the state and a human reason."""
    limit = timeout or inv.connect_timeout
    files = known_hosts_files(inv, host)
    options: dict[str, Any] = {
        "config": ssh_config_paths(inv),
        "known_hosts": _read_known_hosts(files),
        "connect_timeout": limit,
        "keepalive_interval": 15,
        "encryption_algs": FAST_CIPHERS,
    }
    if host.user:
        options["username"] = host.user
    if host.port:
        options["port"] = host.port
    if host.identity_file:
        key_file = os.path.expanduser(host.identity_file)
        if not os.path.isfile(key_file):
            raise HostFailure("auth-failed", f"identity_file {host.identity_file} does not exist")
        options["client_keys"] = [key_file]
    for _attempt in range(2):
        catcher = _KeyCatcher()
        try:
            conn, _ = await asyncio.wait_for(
                asyncssh.create_connection(_factory(catcher), host.address, **options),
                limit + 1,
            )
            return HostSession(host, conn)
        except asyncssh.HostKeyNotVerifiable:
            if catcher.offered is None:
                raise HostFailure("host-key-changed", "the host key was refused") from None
            name, addr, port, key = catcher.offered
            fingerprint = key.get_fingerprint()
            if _known_keys(files, name, addr, port):
                raise HostFailure(
                    "host-key-changed",
                    f"the host key of {_pattern(name, port)} ({fingerprint}) differs from the one "
                    f"in {files[0]}: refusing to connect (if the host was reinstalled, remove "
                    f"the old line with `ssh-keygen -R {shlex.quote(_pattern(name, port))}`)",
                ) from None
            question = HostKeyQuestion(
                host.name, name, port or 22, key.get_algorithm(), fingerprint, files[0]
            )
            if prompt is None or not await prompt(question):
                raise HostFailure(
                    "host-key-unknown",
                    f"{_pattern(name, port)} offered a host key that is not in {files[0]} "
                    f"({fingerprint}); accept it when asked, pass --accept-new-host-keys, "
                    "or ssh to the host once",
                ) from None
            trust_host_key(files[0], name, port, key)
            options["known_hosts"] = _read_known_hosts(files)
        except asyncssh.PermissionDenied as exc:
            keys = host.identity_file or "ssh config, ssh-agent and ~/.ssh keys"
            raise HostFailure(
                "auth-failed",
                f"the server refused the login ({exc.reason}); keys tried: {keys}",
            ) from None
        except TimeoutError:
            raise HostFailure(
                "unreachable", f"no SSH answer from {host.address} within {limit:g}s"
            ) from None
        except ConnectionRefusedError:
            raise HostFailure(
                "unreachable",
                f"connection refused by {host.address}:{host.port or 22}: "
                "no SSH server listens there",
            ) from None
        except socket.gaierror as exc:
            raise HostFailure(
                "unreachable", f"cannot resolve {host.address} ({exc.strerror})"
            ) from None
        except OSError as exc:
            raise HostFailure(
                "unreachable", f"cannot reach {host.address}: {exc.strerror or exc}"
            ) from None
        except asyncssh.Error as exc:
            raise HostFailure("unreachable", f"SSH error: {exc.reason}") from None
    raise HostFailure("host-key-unknown", "the accepted host key was still not trusted")


@contextlib.contextmanager
def command_failures(timeout: float) -> Iterator[None]:
    """A remote command that times out or loses its connection, as HostFailure."""
    try:
        yield
    except TimeoutError:
        raise HostFailure(
            "unreachable", f"the command did not finish within {timeout:g}s"
        ) from None
    except (asyncssh.Error, OSError) as exc:
        raise HostFailure("unreachable", f"the SSH connection failed: {exc}") from None
