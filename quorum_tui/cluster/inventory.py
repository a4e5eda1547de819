"""The cluster file: which hosts to use and how to reach them (TOML, comments kept on edit).

```toml
ssh_config = "~/.ssh/config"       # optional, for every host
known_hosts = "~/.ssh/known_hosts" # optional, else ssh config's UserKnownHostsFile
connect_timeout = 10               # optional, seconds
tunnel_client = "openssh"          # optional: "openssh" (`ssh -L`, the default) or "asyncssh"
server_args = "--alias mine -ctk q8_0 -ctv q8_0"  # optional: llama-server's own options

[[hosts]]
name = "gpu-a"
address = "10.0.0.2"
```
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomlkit

from quorum_tui import paths
from quorum_tui.engine.server_args import ServerArgs
from quorum_tui.errors import QuorumError

TRANSPORTS = ("tunnel", "direct")
TUNNEL_CLIENTS = ("openssh", "asyncssh")
DEFAULT_RPC_PORT = 50052
DEFAULT_CONNECT_TIMEOUT = 10.0
TOP_KEYS = {
    "ssh_config", "known_hosts", "connect_timeout", "tunnel_client", "server_args", "hosts",
}  # fmt: skip
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class HostConfig:
    """One `[[hosts]]` entry."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    rpc_port: int = DEFAULT_RPC_PORT
    transport: str = "tunnel"
    threads: int | None = None
    rpc_server: str | None = None
    models_dir: str | None = None
    """A directory on the host holding copies of models (an NFS mount, files put there
    earlier): the worker's tensor cache is filled from them instead of over the network."""
    cache_gib: float | None = None
    """The most the worker's tensor cache may hold (None: as much as the disk allows)."""

    def to_toml(self) -> dict[str, Any]:
        """The non-default keys, in the documented order."""
        data: dict[str, Any] = {"name": self.name, "address": self.address}
        for f in fields(self)[2:]:
            value = getattr(self, f.name)
            if value is not None and value != f.default:
                data[f.name] = value
        return data


HOST_KEYS = {f.name for f in fields(HostConfig)}


@dataclass
class Inventory:
    """A parsed cluster file."""

    path: Path
    hosts: list[HostConfig] = field(default_factory=list)
    ssh_config: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    tunnel_client: str = "openssh"
    server_args: tuple[str, ...] = ()
    """llama-server's own options for deployments on these hosts (before the command line's,
    which win)."""

    def host(self, name: str) -> HostConfig:
        for host in self.hosts:
            if host.name == name:
                return host
        raise QuorumError(f"{self.path}: no host named {name!r} (see `quorum hosts list`)")


def default_path() -> Path:
    return paths.config_dir() / "cluster.toml"


def resolve_path(path: Path | str | None) -> Path:
    return Path(path).expanduser() if path else default_path()


def load_inventory(path: Path | str | None = None, *, missing_ok: bool = False) -> Inventory:
    """Read and validate a cluster file; errors name the file, the line and the key."""
    file = resolve_path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        if missing_ok:
            return Inventory(file)
        raise QuorumError(
            f"{file}: no cluster file; add a host with `quorum hosts add NAME ADDRESS` "
            "or pass --config FILE"
        ) from None
    except OSError as exc:
        raise QuorumError(f"{file}: cannot read the cluster file ({exc.strerror})") from None
    return parse_inventory(text, file)


def parse_inventory(text: str, file: Path) -> Inventory:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        if found:
            what = str(exc)[: found.start()].strip()
            raise QuorumError(
                f"{file}:{found[1]}: not valid TOML: {what} (column {found[2]})"
            ) from None
        raise QuorumError(f"{file}: not valid TOML: {exc}") from None
    lines = _Lines(text, file)
    for key in data:
        if key not in TOP_KEYS:
            raise lines.error(lines.top_key(key), key, f"unknown key {key!r}")
    inv = Inventory(file)
    for key in ("ssh_config", "known_hosts"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise lines.error(lines.top_key(key), key, "must be a non-empty string")
            setattr(inv, key, data[key])
    if "connect_timeout" in data:
        value = data["connect_timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise lines.error(
                lines.top_key("connect_timeout"), "connect_timeout", "must be a positive number"
            )
        inv.connect_timeout = float(value)
    if "tunnel_client" in data:
        if data["tunnel_client"] not in TUNNEL_CLIENTS:
            raise lines.error(
                lines.top_key("tunnel_client"),
                "tunnel_client",
                f'must be "openssh" or "asyncssh", not {data["tunnel_client"]!r}',
            )
        inv.tunnel_client = data["tunnel_client"]
    if "server_args" in data:
        inv.server_args = _server_args(data["server_args"], lines)
    hosts = data.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, dict) for h in hosts):
        raise lines.error(lines.top_key("hosts"), "hosts", "must be [[hosts]] tables")
    seen: dict[str, int] = {}
    for index, entry in enumerate(hosts):
        host = _parse_host(entry, index, lines)
        if host.name in seen:
            raise lines.error(
                lines.host_key(index, "name"),
                f"hosts[{index}].name",
                f"duplicate name {host.name!r} (also host #{seen[host.name] + 1})",
            )
        seen[host.name] = index
        inv.hosts.append(host)
    return inv


def _server_args(value: Any, lines: _Lines) -> tuple[str, ...]:
    line = lines.top_key("server_args")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        args = tuple(value)
    elif isinstance(value, str):
        try:
            args = tuple(shlex.split(value))
        except ValueError as exc:
            raise lines.error(line, "server_args", f"not valid shell quoting: {exc}") from None
    else:
        raise lines.error(line, "server_args", "must be a string of options or a list of them")
    try:
        ServerArgs.parse(args)
    except QuorumError as exc:
        raise lines.error(line, "server_args", str(exc)) from None
    return args


def _parse_host(entry: dict[str, Any], index: int, lines: _Lines) -> HostConfig:
    def fail(key: str, message: str) -> QuorumError:
        return lines.error(lines.host_key(index, key), f"hosts[{index}].{key}", message)

    for key in entry:
        if key not in HOST_KEYS:
            known = ", ".join(sorted(HOST_KEYS))
            raise fail(key, f"unknown key {key!r} (known keys: {known})")
    for key in ("name", "address"):
        if key not in entry:
            raise lines.error(lines.host_header(index), f"hosts[{index}].{key}", "is missing")
    values: dict[str, Any] = {}
    for key in ("name", "address", "user", "identity_file", "rpc_server", "models_dir"):
        if key in entry:
            value = entry[key]
            if not isinstance(value, str) or not value.strip():
                raise fail(key, "must be a non-empty string")
            values[key] = value.strip()
    if not NAME_RE.match(values["name"]):
        raise fail("name", "use letters, digits, '.', '_' and '-' (at most 63)")
    for key, low in (("port", 1), ("rpc_port", 1), ("threads", 1)):
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(key, f"must be an integer, not {value!r}")
            high = 65535 if key != "threads" else 4096
            if not low <= value <= high:
                raise fail(key, f"must be between {low} and {high}, not {value}")
            values[key] = value
    if "cache_gib" in entry:
        value = entry["cache_gib"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise fail("cache_gib", f"must be a positive number of GiB, not {value!r}")
        values["cache_gib"] = float(value)
    if "transport" in entry:
        if entry["transport"] not in TRANSPORTS:
            raise fail("transport", f'must be "tunnel" or "direct", not {entry["transport"]!r}')
        values["transport"] = entry["transport"]
    return HostConfig(**values)


class _Lines:
    """Find the line of a key in the raw text, for error messages."""

    def __init__(self, text: str, file: Path) -> None:
        self.file = file
        self.lines = text.splitlines()
        self.headers = [
            i for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*hosts\s*\]\]", line)
        ]

    def _find(self, key: str, start: int, end: int) -> int | None:
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, end):
            if pattern.match(self.lines[i]):
                return i + 1
        return None

    def top_key(self, key: str) -> int | None:
        if key == "hosts":
            return self.headers[0] + 1 if self.headers else self._find(key, 0, len(self.lines))
        first_table = next(
            (i for i, line in enumerate(self.lines) if line.lstrip().startswith("[")),
            len(self.lines),
        )
        return self._find(key, 0, first_table)

    def host_header(self, index: int) -> int | None:
        return self.headers[index] + 1 if index < len(self.headers) else None

    def host_key(self, index: int, key: str) -> int | None:
        if index >= len(self.headers):
            return None
        start = self.headers[index]
        nexts = [
            i for i, line in enumerate(self.lines) if i > start and line.lstrip().startswith("[")
        ]
        return self._find(key, start + 1, nexts[0] if nexts else len(self.lines)) or (start + 1)

    def error(self, line: int | None, key: str, message: str) -> QuorumError:
        where = f"{self.file}:{line}" if line else str(self.file)
        return QuorumError(f"{where}: {key}: {message}")


def _document(file: Path) -> tomlkit.TOMLDocument:
    if not file.exists():
        return tomlkit.document()
    load_inventory(file)
    return tomlkit.parse(file.read_text())


def _write(file: Path, doc: tomlkit.TOMLDocument) -> Inventory:
    text = tomlkit.dumps(doc)
    inv = parse_inventory(text, file)
    paths.ensure(file.parent)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(file)
    return inv


def _host_table(host: HostConfig) -> Any:
    table = tomlkit.table()
    for key, value in host.to_toml().items():
        table[key] = value
    return table


def add_host(path: Path | str | None, host: HostConfig) -> Inventory:
    """Append a host; the rest of the file, comments included, stays as it was."""
    file = resolve_path(path)
    doc = _document(file)
    if file.exists() and any(h.name == host.name for h in load_inventory(file).hosts):
        raise QuorumError(f"{file}: a host named {host.name!r} already exists")
    _check_host(host, file)
    hosts = doc.get("hosts")
    if hosts is None:
        hosts = tomlkit.aot()
        doc["hosts"] = hosts
    hosts.append(_host_table(host))
    return _write(file, doc)


def remove_host(path: Path | str | None, name: str) -> Inventory:
    file = resolve_path(path)
    doc = _document(file)
    inv = load_inventory(file)
    inv.host(name)
    hosts = doc["hosts"]
    index = next(i for i, h in enumerate(hosts) if h.get("name") == name)
    del hosts[index]
    if not len(hosts):
        del doc["hosts"]
    return _write(file, doc)


def update_host(path: Path | str | None, name: str, **changes: Any) -> Inventory:
    """Change some keys of one host; `None` removes a key (back to its default)."""
    file = resolve_path(path)
    doc = _document(file)
    current = load_inventory(file).host(name)
    unknown = set(changes) - HOST_KEYS
    if unknown:
        raise QuorumError(f"unknown host key(s): {', '.join(sorted(unknown))}")
    updated = replace(current, **changes)
    _check_host(updated, file)
    table = next(h for h in doc["hosts"] if h.get("name") == name)
    new = updated.to_toml()
    for key in HOST_KEYS:
        if key in new:
            table[key] = new[key]
        elif key in table:
            del table[key]
    return _write(file, doc)


def save_inventory(inv: Inventory) -> Inventory:
    """Write `inv` to its path, keeping comments of hosts that still exist."""
    doc = _document(inv.path)
    for key in ("ssh_config", "known_hosts"):
        value = getattr(inv, key)
        if value:
            doc[key] = value
        elif key in doc:
            del doc[key]
    if inv.tunnel_client != "openssh":
        doc["tunnel_client"] = inv.tunnel_client
    elif "tunnel_client" in doc:
        del doc["tunnel_client"]
    if inv.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
        doc["connect_timeout"] = inv.connect_timeout
    elif "connect_timeout" in doc:
        del doc["connect_timeout"]
    old = {h.get("name"): h for h in doc.get("hosts", [])}
    hosts = tomlkit.aot()
    for host in inv.hosts:
        _check_host(host, inv.path)
        table = old.get(host.name)
        new = host.to_toml()
        if table is None:
            table = _host_table(host)
        else:
            for key in HOST_KEYS:
                if key in new:
                    table[key] = new[key]
                elif key in table:
                    del table[key]
        hosts.append(table)
    if "hosts" in doc:
        del doc["hosts"]
    if inv.hosts:
        doc["hosts"] = hosts
    return _write(inv.path, doc)


def _check_host(host: HostConfig, file: Path) -> None:
    _parse_host(host.to_toml(), 0, _Lines("", file))
