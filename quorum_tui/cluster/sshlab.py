"""A lab of SSH hosts on this machine for tests and benchmarks: real sshd, one netns each.

As root every host is a network namespace on a private bridge with its own 10.x address and
its own sshd on port 22; otherwise every host is an sshd on its own loopback port. Only
these addresses are ever targeted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quorum_tui.cluster.runtime import EXTRA_PACKAGES, LLAMA_VERSION
from quorum_tui.engine.localcluster import free_port

SSHD = "/usr/sbin/sshd"
IS_ROOT = os.geteuid() == 0
_LABS = itertools.count()


RUNTIME_DEPS = ("numpy", "jinja2", "markupsafe", "diskcache", "typing-extensions")


def build_wheelhouse(house: Path) -> Path:
    """Wheels for the lab hosts' runtime installs (the namespaces have no internet).

    llama-cpp-python's wheel is the RPC build `make install` keeps in the venv's wheelhouse
    (or, failing that, pip's wheel cache), so nothing compiles llama.cpp; its small
    dependencies are downloaded once.
    """
    house.mkdir(parents=True, exist_ok=True)
    if not list(house.glob("llama_cpp_python-*.whl")):
        pattern = f"llama_cpp_python-{LLAMA_VERSION}-*.whl"
        cached = sorted((Path(sys.prefix) / "wheelhouse").glob(pattern)) or sorted(
            (Path.home() / ".cache" / "pip" / "wheels").rglob(pattern)
        )
        if not cached:
            raise RuntimeError("no llama-cpp-python wheel in pip's cache: run `make install`")
        shutil.copy(cached[-1], house)
    if (house / ".complete").exists():
        return house
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
         "--dest", str(house), *RUNTIME_DEPS, *EXTRA_PACKAGES],
        check=True,
    )  # fmt: skip
    (house / ".complete").touch()
    return house


TOOLS = {name: shutil.which(name) or name for name in ("ip", "ssh-keygen")}
"""Resolved once, so that a test changing PATH cannot stop the teardown."""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLS.get(cmd[0], cmd[0]), *cmd[1:]], check=check, capture_output=True, text=True
    )


def keygen(path: Path) -> Path:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


@dataclass
class LabHost:
    name: str
    index: int
    address: str
    port: int
    dir: Path
    netns: str | None
    env: dict[str, str]
    lab: SshLab
    sshd: subprocess.Popen[bytes] | None = None
    host_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.dir / "ssh_host_ed25519_key")

    def ns_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else list(cmd)

    def write_config(self) -> Path:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.lab.authorized_keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n"
            "AllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
            + (f"SetEnv {env}\n" if env else "")
        )
        return config

    def start(self) -> None:
        config = self.write_config()
        log = (self.dir / "sshd.log").open("ab")
        self.sshd = subprocess.Popen(
            self.ns_cmd(SSHD, "-D", "-e", "-f", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited: {self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.name} did not listen: {self.log_text()}")

    def log_text(self) -> str:
        return (self.dir / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.sshd and self.sshd.poll() is None:
            self.sshd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sshd.wait(5)
        self.sshd = None

    def new_host_key(self) -> None:
        """Reinstall the host: a new host key (known_hosts still has the old one)."""
        self.stop()
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        keygen(self.host_key)
        self.start()

    def link_down(self) -> None:
        """The host vanishes from the network (packets go nowhere)."""
        if self.netns:
            sh("ip", "-n", self.netns, "link", "set", "eth0", "down")
        else:
            self.stop()

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        pattern = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{pattern} {key[0]} {key[1]}\n"

    def pids(self) -> list[int]:
        """Every process running in this host's namespace (workers included)."""
        if not self.netns:
            return []
        out = sh("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]


class SshLab:
    """Hosts, a client key, a wrong key, a known_hosts file and an ssh config."""

    def __init__(self, root: Path, remote_cache: Path, wheelhouse: Path) -> None:
        self.root = root
        self.remote_cache = remote_cache
        self.base_env = {
            "QUORUM_CACHE_DIR": str(remote_cache),
            "PIP_CONFIG_FILE": "/dev/null",
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheelhouse),
        }
        root.mkdir(parents=True, exist_ok=True)
        self.client_key = keygen(root / "client_key")
        self.wrong_key = keygen(root / "wrong_key")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("")
        self.ssh_config = root / "ssh_config"
        self.ssh_config.write_text(
            "Host *\n  User root\n"
            f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
        )
        self.hosts: list[LabHost] = []
        self.namespaces: list[str] = []
        tag = os.getpid() % 10000
        number = next(_LABS)
        self.prefix = f"qt{tag}x{number}"
        self.bridge = f"qbr{tag}x{number}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{(os.getpid() // 50 + number) % 250}"
        self.netns_mode = IS_ROOT
        if IS_ROOT:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if self.netns_mode:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")

    def add(self, name: str, *, known: bool = True, env: dict[str, str] | None = None) -> LabHost:
        index = len(self.hosts) + 1
        host_env = {**self.base_env, **(env or {})}
        if self.netns_mode:
            ns = f"{self.prefix}-{index}"
            veth = f"{self.prefix}v{index}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            address = f"{self.subnet}.{index + 1}"
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            host = LabHost(name, index, address, 22, self.root / name, ns, host_env, self)
        else:
            host = LabHost(
                name, index, "127.0.0.1", free_port(), self.root / name, None, host_env, self
            )
        self.hosts.append(host)
        host.start()
        if known:
            with self.known_hosts.open("a") as out:
                out.write(host.known_hosts_line())
        return host

    def cluster_file(
        self,
        hosts: list[LabHost],
        *,
        transport: str = "tunnel",
        extra: dict[str, dict[str, object]] | None = None,
        connect_timeout: float = 10,
        tunnel_client: str = "openssh",
    ) -> Path:
        lines = [
            f'ssh_config = "{self.ssh_config}"',
            f"connect_timeout = {connect_timeout}",
            f'tunnel_client = "{tunnel_client}"',
            "",
        ]
        for host in hosts:
            values: dict[str, object] = {
                "name": host.name,
                "address": host.address,
                "port": host.port,
                "rpc_port": 40000 + os.getpid() % 1000 * 20 + host.index,
                "transport": transport,
                "threads": 1,
                **(extra or {}).get(host.name, {}),
            }
            lines.append("[[hosts]]")
            for key, value in values.items():
                text = f'"{value}"' if isinstance(value, str | Path) else str(value)
                lines.append(f"{key} = {text}")
            lines.append("")
        path = self.root / f"cluster-{len(list(self.root.glob('cluster-*.toml')))}.toml"
        path.write_text("\n".join(lines))
        return path

    def kill_workers(self) -> None:
        """SIGTERM, then SIGKILL after a grace period, every process but sshd in the lab.

        The grace period matters: a login shell killed outright in the middle of its rc files
        can leave a lock behind (pyenv's rehash lock makes every later login shell wait 60 s).
        """
        pids: list[int] = []
        for host in self.hosts:
            pids += [p for p in host.pids() if host.sshd is None or p != host.sshd.pid]
        if not self.netns_mode:
            workers = self.remote_cache / "workers"
            for pidfile in workers.glob("*.pid") if workers.exists() else []:
                with contextlib.suppress(ValueError, OSError):
                    pids.append(int(pidfile.read_text().strip()))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.02)

    def close(self) -> None:
        """Kill every process of the lab and delete its namespaces, whatever fails on the way."""
        with contextlib.suppress(Exception):
            self.kill_workers()
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()
        with contextlib.suppress(Exception):
            self.kill_workers()
        if self.netns_mode:
            for index, ns in enumerate(self.namespaces, start=1):
                with contextlib.suppress(Exception):
                    sh("ip", "link", "del", f"{self.prefix}v{index}", check=False)
                    sh("ip", "netns", "del", ns, check=False)
            with contextlib.suppress(Exception):
                sh("ip", "link", "del", self.bridge, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


@contextlib.contextmanager
def temporary_lab(count: int, root: Path | None = None) -> Iterator[tuple[SshLab, list[LabHost]]]:
    """`count` lab hosts for a benchmark, torn down afterwards.

    The runtime and wheels live under Quorum's cache dir so that later runs reuse them.
    """
    from quorum_tui import paths

    base = paths.ensure(paths.cache_dir() / "sshlab")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        lab = SshLab(
            Path(tmp) / "lab",
            paths.ensure(base / "remote-cache"),
            build_wheelhouse(base / "wheelhouse"),
        )
        try:
            hosts = [lab.add(f"lab{i + 1}") for i in range(count)]
            yield lab, hosts
        finally:
            lab.close()
