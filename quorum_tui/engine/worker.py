"""`quorum worker`: llama.cpp's RPC server in the foreground, from the bundled libraries."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from quorum_tui import paths
from quorum_tui.engine.endpoint import check_numeric_host, format_endpoint
from quorum_tui.engine.probe import PROTOCOL
from quorum_tui.errors import QuorumError

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class WorkerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int = 0
    cache_dir: Path | None = None
    log_file: Path | None = None
    exit_with_parent: bool = False


def default_cache_dir() -> Path:
    return paths.cache_dir() / "rpc-cache"


def default_log_file(port: int) -> Path:
    return paths.cache_dir() / "logs" / f"worker-{port}.log"


def check_port_free(host: str, port: int) -> None:
    """Fail early, with a clear message, when something already listens on host:port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise QuorumError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "another program uses that port, pick another with --port"
        ) from None
    finally:
        sock.close()


def run_worker(options: WorkerOptions, out: TextIO | None = None) -> None:
    """Serve until a signal ends the process; raise QuorumError if the server cannot start."""
    check_numeric_host(options.host)
    check_port_free(options.host, options.port)
    log_path = options.log_file or default_log_file(options.port)
    paths.ensure(log_path.parent)
    _redirect_native_output(log_path)
    out = out or sys.stdout
    from quorum_tui.engine import ggml

    devices = ggml.server_devices()
    for dev in devices:
        if ggml.is_cpu(dev):
            ggml.report_room(dev)
    verdict = ggml.loaded()[1]
    cache = str(paths.ensure(options.cache_dir)) if options.cache_dir else None
    threads = options.threads or os.cpu_count() or 1
    endpoint = format_endpoint(options.host, options.port)
    labels = ", ".join(ggml.device_label(d) for d in devices)
    print(
        f"quorum worker on {endpoint}: RPC protocol {'.'.join(map(str, PROTOCOL))}, "
        f"{threads} threads, devices: {labels}, tensor cache: {cache or 'off'}, "
        f"llama.cpp log: {log_path}; {verdict.summary()}",
        file=out,
        flush=True,
    )
    if options.host != "127.0.0.1":
        print(
            f"warning: {endpoint} is reachable from the network and the RPC protocol has no "
            "authentication; prefer 127.0.0.1 behind an SSH tunnel",
            file=out,
            flush=True,
        )
    if options.exit_with_parent:
        _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ggml.start_server(endpoint, cache, threads, devices)
    raise QuorumError(f"the RPC server on {endpoint} stopped; see {log_path}")


def _exit_with_parent() -> None:
    """End the worker when the process that started it is gone (it was re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _redirect_native_output(log_path: Path) -> None:
    """Send llama.cpp's own stdout and stderr to the log; Python keeps the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_out = os.dup(1)
    terminal_err = os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(terminal_out, "w", buffering=1)
    sys.stderr = os.fdopen(terminal_err, "w", buffering=1)
