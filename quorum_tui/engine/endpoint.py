"""HOST:PORT endpoints as the RPC backend takes them."""

from __future__ import annotations

import ipaddress

from quorum_tui.errors import QuorumError


def parse_endpoint(text: str, *, numeric: bool = False) -> tuple[str, int]:
    """Split `HOST:PORT`; with `numeric`, the host must be an IPv4 address (llama.cpp's rule)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise QuorumError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:50052)")
    try:
        port = int(port_text)
    except ValueError:
        raise QuorumError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise QuorumError(f"{text!r}: port {port} is outside 1-65535")
    if numeric:
        check_numeric_host(host)
    return host, port


def check_numeric_host(host: str) -> None:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise QuorumError(
            f"host {host!r} is not a numeric IPv4 address: llama.cpp's RPC server binds only "
            "to addresses like 127.0.0.1 or 0.0.0.0"
        ) from None


def format_endpoint(host: str, port: int) -> str:
    return f"{host}:{port}"
