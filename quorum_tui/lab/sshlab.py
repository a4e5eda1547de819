"""A lab of SSH hosts on this machine for tests and benchmarks: real sshd, one netns each.

As root every host is a network namespace on a private bridge with its own 10.x address and
its own sshd on port 22; otherwise every host is an sshd on its own loopback port. Only
these addresses are ever targeted.

A namespace host's link to the bridge can have a delay and a rate limit, each way, like a
machine on a LAN: the host's veth then passes through a namespace of its own, where `tc netem`
delays the frames (and limits the rate) in both directions, or, on a kernel without the netem
qdisc, `forward_frames` relays them late in user space (with `tc tbf` for the rate). The round
trip from this machine to the host is then about twice the delay; between two hosts, twice the
sum of their delays.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quorum_tui.engine.localcluster import free_port
from quorum_tui.errors import QuorumError
from quorum_tui.lab.cgroups import MemoryCap
from quorum_tui.logs import logged

log = logging.getLogger(__name__)
SSHD = "/usr/sbin/sshd"
IS_ROOT = os.geteuid() == 0
_LABS = itertools.count()


TOOLS = {name: shutil.which(name) or name for name in ("ip", "tc", "ssh-keygen", "nsenter")}
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
    sftp: bool = True
    link: str = ""
    """How the host's link is shaped, e.g. `netem delay 1ms` (empty: a plain veth)."""
    cap: MemoryCap | None = None
    """The memory cgroup everything the host's sshd starts lives in (None: uncapped)."""
    host_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.dir / "ssh_host_ed25519_key")

    def ns_cmd(self, *cmd: str) -> list[str]:
        """`cmd` in the host's network namespace. nsenter, not `ip netns exec`: that one also
        remounts /sys, which hides the cgroup filesystem a capped host's workers read their
        memory limit from."""
        if not self.netns:
            return list(cmd)
        return [TOOLS["nsenter"], f"--net=/run/netns/{self.netns}", *cmd]

    def write_config(self) -> Path:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.lab.authorized_keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n"
            "AllowTcpForwarding yes\nLogLevel ERROR\n"
            + ("Subsystem sftp internal-sftp\n" if self.sftp else "")
            + (f"SetEnv {env}\n" if env else "")
        )
        return config

    def start(self) -> None:
        config = self.write_config()
        log = (self.dir / "sshd.log").open("ab")
        argv = self.ns_cmd(SSHD, "-D", "-e", "-f", str(config))
        self.sshd = subprocess.Popen(
            self.cap.wrap(argv) if self.cap else argv,
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
    """Hosts, a client key, a wrong key, a known_hosts file and an ssh config.

    `delay_ms` and `rate_mbit` are every host's link delay and rate limit, each way, unless
    `add` says otherwise.
    """

    def __init__(
        self,
        root: Path,
        remote_cache: Path,
        *,
        delay_ms: float = 0.0,
        rate_mbit: float | None = None,
        mem_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.delay_ms = delay_ms
        self.rate_mbit = rate_mbit
        self.mem_bytes = mem_bytes
        self.caps: list[MemoryCap] = []
        self.remote_cache = remote_cache
        root.mkdir(parents=True, exist_ok=True)
        no_wheels = root / "no-wheels"
        no_wheels.mkdir(exist_ok=True)
        self.base_env = {
            "QUORUM_CACHE_DIR": str(remote_cache),
            "PIP_CONFIG_FILE": "/dev/null",
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(no_wheels),
        }
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
        self.links: list[str] = []
        self.forwarders: list[subprocess.Popen[str]] = []
        tag = os.getpid() % 10000
        number = next(_LABS)
        self.prefix = f"qt{tag}x{number}"
        self.bridge = f"qbr{tag}x{number}"
        self.subnet = _free_subnet(os.getpid(), number)
        self.netns_mode = IS_ROOT
        if IS_ROOT:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if self.netns_mode:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")

    def add(
        self,
        name: str,
        *,
        known: bool = True,
        env: dict[str, str] | None = None,
        sftp: bool = True,
        delay_ms: float | None = None,
        rate_mbit: float | None = None,
        mem_bytes: int | None = None,
    ) -> LabHost:
        """Start a host. `sftp=False` leaves the SFTP subsystem out of its sshd; `delay_ms`
        and `rate_mbit` (None: the lab's) shape its link each way; `mem_bytes` (None: the
        lab's) caps the memory of everything it runs."""
        index = len(self.hosts) + 1
        host_env = {**self.base_env, **(env or {})}
        delay = self.delay_ms if delay_ms is None else delay_ms
        rate = self.rate_mbit if rate_mbit is None else rate_mbit
        if self.netns_mode:
            ns = f"{self.prefix}-{index}"
            veth = f"{self.prefix}v{index}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.links.append(veth)
            link = self._plumb(ns, veth, delay, rate)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            address, port = f"{self.subnet}.{index + 1}", 22
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        elif delay or rate:
            raise QuorumError(
                "a lab link delay or rate limit needs network namespaces: run as root, "
                "or leave the delay and rate out"
            )
        else:
            ns, link, address, port = None, "", "127.0.0.1", free_port()
        limit = self.mem_bytes if mem_bytes is None else mem_bytes
        cap = MemoryCap.create(f"{self.prefix}-{index}", limit) if limit else None
        if cap is not None:
            self.caps.append(cap)
        host = LabHost(
            name, index, address, port, self.root / name, ns, host_env, self, sftp=sftp,
            link=link, cap=cap,
        )  # fmt: skip
        self.hosts.append(host)
        host.start()
        if known:
            with self.known_hosts.open("a") as out:
                out.write(host.known_hosts_line())
        return host

    def _plumb(self, ns: str, veth: str, delay_ms: float, rate_mbit: float | None) -> str:
        """Link the bridge's `veth` to eth0 in `ns`; return how the link is shaped.

        A shaped link passes through namespace `<ns>w`: its `lan` end faces the bridge, its
        `host` end the host, and both send late (and at the rate) what they pass on.
        """
        if not delay_ms and not rate_mbit:
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            return ""
        wire = f"{ns}w"
        sh("ip", "netns", "add", wire)
        self.namespaces.append(wire)
        sh("ip", "link", "add", "name", veth, "type", "veth", "peer", "name", "lan", "netns", wire)
        sh("ip", "-n", wire, "link", "add", "name", "host", "type", "veth",
           "peer", "name", "eth0", "netns", ns)  # fmt: skip
        ends = ("lan", "host")
        for end in ends:
            sh("ip", "-n", wire, "link", "set", "dev", end, "addrgenmode", "none")
            sh("ip", "-n", wire, "link", "set", "dev", end, "up")
        rate = ["rate", f"{rate_mbit:g}mbit"] if rate_mbit else []
        how = []
        if delay_ms:
            netem = ["netem", "delay", f"{delay_ms:g}ms", *rate]
            if _qdisc(wire, ends, netem):
                self._bridge(wire, ends)
                return " ".join(netem)
            self._forward(wire, delay_ms / 1000)
            how.append(
                f"delay {delay_ms:g}ms by a user-space relay (no netem qdisc in this kernel)"
            )
        else:
            self._bridge(wire, ends)
        if rate_mbit:
            burst = max(1 << 17, int(rate_mbit * 1e6 / 8 / 1000))
            tbf = ["tbf", *rate, "burst", str(burst), "latency", "50ms"]
            if not _qdisc(wire, ends, tbf):
                raise RuntimeError("this kernel has no tbf qdisc to limit a lab link's rate")
            how.append(" ".join(tbf[:3]))
        return ", ".join(how)

    def _bridge(self, wire: str, ends: tuple[str, str]) -> None:
        sh("ip", "-n", wire, "link", "add", "name", "wire", "type", "bridge")
        for end in ends:
            sh("ip", "-n", wire, "link", "set", "dev", end, "master", "wire")
        sh("ip", "-n", wire, "link", "set", "dev", "wire", "up")

    def _forward(self, wire: str, delay_s: float) -> None:
        """Start `forward_frames` in `wire`; it runs until the lab closes its stdin."""
        log = self.root / f"{wire}.log"
        code = "import sys; from quorum_tui.lab.sshlab import forward_frames; forward_frames"
        with log.open("w") as err:
            relay = subprocess.Popen(
                [TOOLS["ip"], "netns", "exec", wire, sys.executable, "-c",
                 f"{code}(float(sys.argv[1]))", str(delay_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        self.forwarders.append(relay)
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            relay.wait(5)
            text = log.read_text(errors="replace")
            raise RuntimeError(f"the frame relay of lab link {wire} did not start: {text}")

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
            found = host.pids() + (host.cap.pids() if host.cap else [])
            pids += [p for p in found if host.sshd is None or p != host.sshd.pid]
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
        with logged(log, "killing the lab's processes"):
            self.kill_workers()
        for host in self.hosts:
            with logged(log, f"stopping lab host {host.name}"):
                host.stop()
        with logged(log, "killing the lab's processes"):
            self.kill_workers()
        for relay in self.forwarders:
            with logged(log, "stopping a frame relay"):
                relay.kill()
                relay.wait(5)
        if self.netns_mode:
            for veth in self.links:
                with logged(log, f"deleting link {veth}"):
                    sh("ip", "link", "del", veth, check=False)
            for ns in self.namespaces:
                with logged(log, f"deleting namespace {ns}"):
                    sh("ip", "netns", "del", ns, check=False)
            with logged(log, f"deleting bridge {self.bridge}"):
                sh("ip", "link", "del", self.bridge, check=False)
        for cap in self.caps:
            with logged(log, f"removing memory cgroup {cap.folder}"):
                for pid in cap.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while cap.pids() and time.monotonic() < deadline:
                    time.sleep(0.02)
                cap.remove()


def _qdisc(wire: str, ends: tuple[str, str], spec: list[str]) -> bool:
    """Add the qdisc `spec` on both ends; False if this kernel does not have that kind."""
    for end in ends:
        done = sh("tc", "-n", wire, "qdisc", "add", "dev", end, "root", *spec, check=False)
        if done.returncode != 0:
            if "unknown" in done.stderr:
                return False
            raise RuntimeError(f"tc cannot add {spec[0]} to a lab link: {done.stderr.strip()}")
    return True


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


ETH_P_ALL = 3
SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
FRAME_MAX = 1 << 18


def _frame_socket(interface: str) -> socket.socket:
    """A raw socket on `interface` whose frames carry their offload header (virtio_net_hdr):
    TCP's segments of up to 64 KiB and unfinished checksums cross as they are."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def forward_frames(delay_s: float, ends: tuple[str, str] = ("lan", "host")) -> None:
    """Relay every frame between two interfaces `delay_s` late, both ways, in order, until
    stdin closes; prints `ready` once listening. A frame that cannot be sent is dropped, as
    a wire would."""
    socks = [_frame_socket(end) for end in ends]
    queues: list[deque[tuple[float, bytes]]] = [deque(), deque()]

    def exit_when_orphaned() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        for out, queue in zip(socks, queues, strict=True):
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):
                    out.send(queue.popleft()[1])
        due = [queue[0][0] for queue in queues if queue]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        ready, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for sock in ready:
            onward = queues[1 - socks.index(sock)]
            with contextlib.suppress(BlockingIOError):
                while True:
                    frame, (_, _, kind, *_) = sock.recvfrom(FRAME_MAX)
                    if kind != socket.PACKET_OUTGOING:
                        onward.append((now + delay_s, frame))


def _free_subnet(pid: int, number: int) -> str:
    """A 10.x.y subnet for the lab's bridge that no interface here uses (a lab another
    process left behind keeps its addresses)."""
    taken = sh("ip", "-o", "-4", "addr", "show", check=False).stdout if IS_ROOT else ""
    for step in range(250):
        subnet = f"10.{200 + pid % 50}.{(pid // 50 + number + step) % 250}"
        if f" {subnet}." not in taken:
            return subnet
    raise QuorumError("no free 10.x.y subnet for a lab: remove the labs left behind (ip netns)")


@contextlib.contextmanager
def temporary_lab(
    count: int,
    root: Path | None = None,
    *,
    delay_ms: float = 0.0,
    rate_mbit: float | None = None,
    mem_bytes: int | None = None,
    own_caches: bool = False,
) -> Iterator[tuple[SshLab, list[LabHost]]]:
    """`count` lab hosts for a benchmark (links shaped and memory capped as `SshLab` says),
    torn down afterwards.

    The hosts start with nothing installed: each bring-up ships them the runtime. They share
    one QUORUM_CACHE_DIR unless `own_caches` gives each its own (`host.env` names it), as
    separate machines would have: then each has its own tensor cache and its own runtime.
    """
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        lab = SshLab(
            Path(tmp) / "lab",
            Path(tmp) / "remote-cache",
            delay_ms=delay_ms,
            rate_mbit=rate_mbit,
            mem_bytes=mem_bytes,
        )
        try:
            names = [f"lab{i + 1}" for i in range(count)]
            own = {n: {"QUORUM_CACHE_DIR": str(Path(tmp) / f"cache-{n}")} for n in names}
            hosts = [lab.add(n, env=own[n] if own_caches else None) for n in names]
            yield lab, hosts
        finally:
            lab.close()
