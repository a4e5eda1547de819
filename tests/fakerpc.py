"""A small fake RPC server for tests: answers HELLO with any version, or misbehaves."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

HELLO = 14
DEVICE_COUNT = 15
GET_DEVICE_MEMORY = 11


@contextmanager
def fake_rpc_server(
    version: tuple[int, int, int] = (6, 1, 0), behaviour: str = "answer"
) -> Iterator[str]:
    """Yield `127.0.0.1:PORT` of a server that answers HELLO with `version`.

    behaviour: "answer" (HELLO, DEVICE_COUNT = 1, 1 GiB free of 2 GiB), "close" (closes the
    connection at HELLO, like an old protocol), or "silent" (reads and never answers).
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def recv(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def serve(conn: socket.socket) -> None:
        try:
            while not stop.is_set():
                cmd, size = struct.unpack("<BQ", recv(conn, 9))
                payload = recv(conn, size)
                if behaviour == "close":
                    return
                if behaviour == "silent":
                    stop.wait()
                    return
                if cmd == HELLO:
                    reply = bytes(version) + bytes(25)
                elif cmd == DEVICE_COUNT:
                    reply = struct.pack("<I", 1)
                elif cmd == GET_DEVICE_MEMORY:
                    del payload
                    reply = struct.pack("<QQ", 1 << 30, 2 << 30)
                else:
                    return
                conn.sendall(struct.pack("<Q", len(reply)) + reply)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for conn in connections:
            with suppress(OSError):
                conn.close()


class BlackholeProxy:
    """A TCP relay to `target` that can vanish like a host cut off the network.

    After `blackhole()`, new connections are refused and relayed bytes are dropped, but open
    connections stay open: the peer waits for answers that never come.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not self.cut.is_set():
                    with suppress(OSError):
                        dst.shutdown(socket.SHUT_RDWR)
                return
            if self.cut.is_set():
                continue
            try:
                dst.sendall(data)
            except OSError:
                return

    def blackhole(self) -> None:
        self.cut.set()
        self.server.close()

    def close(self) -> None:
        self.blackhole()
        for s in self.sockets:
            with suppress(OSError):
                s.close()
