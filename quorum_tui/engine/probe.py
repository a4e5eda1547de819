"""Ask an RPC worker for its protocol version and memory, in pure Python, with a timeout.

Frames are little-endian and packed: a request is `u8 cmd | u64 len | payload`, a reply is
`u64 len | payload`. HELLO must come first. A worker serves one client at a time, so a worker
that accepts the TCP connection but never answers HELLO is busy with a coordinator.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from quorum_tui.engine.endpoint import parse_endpoint

PROTOCOL = (7, 0, 0)
"""The RPC protocol of the pinned llama-cpp-python (ggml-rpc.h, RPC_PROTO_*_VERSION)."""

CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
HELLO_REQUEST_BYTES = 24
HELLO_REPLY_BYTES = 28

Status = Literal["ok", "busy", "incompatible", "unreachable"]


@dataclass(frozen=True)
class DeviceMemory:
    free: int
    total: int

    @property
    def vouched(self) -> bool:
        """Whether the figure can be trusted: llama.cpp's own CPU device reports all of the
        machine's RAM as free (free == total); Quorum's workers report what their process
        may still use (engine.room), and a GPU its real free memory, both below the total."""
        return self.free < self.total


@dataclass(frozen=True)
class ProbeResult:
    """What a worker said, or why it said nothing useful."""

    endpoint: str
    status: Status
    reason: str
    version: tuple[int, int, int] | None = None
    devices: tuple[DeviceMemory, ...] = field(default_factory=tuple)
    rtt_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def free(self) -> int:
        return sum(d.free for d in self.devices)

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)

    @property
    def version_text(self) -> str | None:
        return ".".join(map(str, self.version)) if self.version else None

    @property
    def vouched(self) -> bool:
        return all(d.vouched for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = self.version_text
        data["free"] = self.free
        data["total"] = self.total
        data["free_vouched"] = self.vouched
        return data


class ConnectionClosed(Exception):
    """The worker closed the connection or answered with a frame of the wrong size."""


def compatible(version: tuple[int, int, int], ours: tuple[int, int, int] = PROTOCOL) -> bool:
    """llama.cpp's client rule: same major, server minor not newer than ours."""
    return version[0] == ours[0] and version[1] <= ours[1]


def probe(endpoint: str, timeout: float = 3.0) -> ProbeResult:
    """Probe one worker; never raises for network trouble, only for a malformed endpoint."""
    host, port = parse_endpoint(endpoint)
    ours = ".".join(map(str, PROTOCOL))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return ProbeResult(endpoint, "unreachable", _os_reason(exc))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        started = time.perf_counter()
        try:
            reply = call(sock, CMD_HELLO, bytes(HELLO_REQUEST_BYTES), HELLO_REPLY_BYTES)
        except TimeoutError:
            return ProbeResult(
                endpoint,
                "busy",
                f"accepted the connection but did not answer within {timeout:g}s: "
                "it is serving another coordinator",
            )
        except ConnectionClosed:
            return ProbeResult(
                endpoint,
                "incompatible",
                f"closed the connection at HELLO: not an RPC worker of protocol {ours}",
            )
        rtt = (time.perf_counter() - started) * 1000
        version = (reply[0], reply[1], reply[2])
        theirs = ".".join(map(str, version))
        if not compatible(version):
            return ProbeResult(
                endpoint,
                "incompatible",
                f"speaks RPC protocol {theirs} but this Quorum speaks {ours}",
                version,
            )
        (count,) = struct.unpack("<I", call(sock, CMD_DEVICE_COUNT, b"", 4))
        devices = []
        for index in range(count):
            free, total = struct.unpack(
                "<QQ", call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16)
            )
            devices.append(DeviceMemory(free, total))
        return ProbeResult(
            endpoint, "ok", f"protocol {theirs}, {count} device(s)", version, tuple(devices), rtt
        )
    except TimeoutError:
        return ProbeResult(endpoint, "busy", f"stopped answering within {timeout:g}s")
    except (ConnectionClosed, OSError) as exc:
        return ProbeResult(endpoint, "unreachable", f"connection lost during probe ({exc})")
    finally:
        sock.close()


async def probe_async(endpoint: str, timeout: float = 3.0) -> ProbeResult:
    return await asyncio.to_thread(probe, endpoint, timeout)


async def probe_all(endpoints: list[str], timeout: float = 3.0) -> list[ProbeResult]:
    """Probe every endpoint at once."""
    return list(await asyncio.gather(*(probe_async(e, timeout) for e in endpoints)))


def call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    """Send one request frame and read its reply of `reply_size` bytes."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionClosed(f"reply of {size} bytes, expected {reply_size}")
    return recv_exact(sock, size)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionClosed("connection closed")
        data += chunk
    return bytes(data)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: no worker is listening there"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer to the TCP connection (host down or firewalled)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    return exc.strerror or str(exc)
