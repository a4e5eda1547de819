"""The cluster file: parsing, errors that name file, line and key, edits that keep comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorum_tui.cli import main
from quorum_tui.cluster.inventory import (
    HostConfig,
    Inventory,
    add_host,
    default_path,
    load_inventory,
    remove_host,
    save_inventory,
    update_host,
)
from quorum_tui.errors import QuorumError

GOOD = """\
# my cluster
ssh_config = "~/.ssh/quorum_config"
connect_timeout = 4

[[hosts]]
name = "gpu-a"                      # the big one
address = "10.0.0.2"
user = "alice"
port = 2222
identity_file = "~/.ssh/id_ed25519"
rpc_port = 50053
transport = "tunnel"
threads = 8

[[hosts]]
name = "cpu-b"
address = "box-b"
transport = "direct"
rpc_server = "/opt/llama/ggml-rpc-server"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_parses_every_key(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.ssh_config == "~/.ssh/quorum_config" and inv.connect_timeout == 4
    assert inv.known_hosts is None
    assert inv.tunnel_client == "openssh"
    a, b = inv.hosts
    assert a == HostConfig("gpu-a", "10.0.0.2", "alice", 2222, "~/.ssh/id_ed25519", 50053,
                           "tunnel", 8)  # fmt: skip
    assert b == HostConfig("cpu-b", "box-b", transport="direct",
                           rpc_server="/opt/llama/ggml-rpc-server")  # fmt: skip
    assert b.rpc_port == 50052 and b.user is None and b.port is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('transport = "tunnel"', 'transport = "udp"', r":12: hosts\[0\].transport: must be"),
        ("rpc_port = 50053", "rpc_port = 70000", r":11: hosts\[0\].rpc_port: must be between"),
        ("port = 2222", 'port = "22"', r":9: hosts\[0\].port: must be an integer"),
        ("threads = 8", "threads = 0", r":13: hosts\[0\].threads: must be between"),
        ("threads = 8", "threads = 8\ncache_gib = 0", r":14: hosts\[0\].cache_gib: must be a pos"),
        ("threads = 8", 'threads = 8\ncache_gib = "2G"', r":14: hosts\[0\].cache_gib: must be"),
        ("threads = 8", 'threads = 8\nmodels_dir = ""', r":14: hosts\[0\].models_dir: must be"),
        ('name = "cpu-b"', 'name = "gpu-a"', r":16: hosts\[1\].name: duplicate name 'gpu-a'"),
        ('name = "cpu-b"', 'name = "a b"', r":16: hosts\[1\].name: use letters"),
        ('address = "box-b"', 'adress = "box-b"', r":17: hosts\[1\].adress: unknown key"),
        ('address = "box-b"\n', "", r":15: hosts\[1\].address: is missing"),
        ('user = "alice"', 'user = ""', r":8: hosts\[0\].user: must be a non-empty string"),
        ("connect_timeout = 4", "connect_timeout = -1", r":3: connect_timeout: must be a positive"),
        ("connect_timeout = 4", "conect_timeout = 4", r":3: conect_timeout: unknown key"),
        (
            "connect_timeout = 4",
            'connect_timeout = 4\ntunnel_client = "putty"',
            r":4: tunnel_client: must be \"openssh\" or \"asyncssh\", not 'putty'",
        ),
        (
            "port = 2222",
            "port = 2222\nport = 22",
            r":10: not valid TOML: Cannot overwrite a value \(column 10\)",
        ),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(QuorumError, match=str(path).replace(".", r"\.") + expected):
        load_inventory(path)


def test_missing_file_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(QuorumError, match="no cluster file; add a host with `quorum hosts add"):
        load_inventory(tmp_path / "nope.toml")
    assert load_inventory(tmp_path / "nope.toml", missing_ok=True).hosts == []


def test_edits_keep_comments_and_order(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    add_host(path, HostConfig("new-c", "10.0.0.9", threads=2))
    update_host(path, "gpu-a", threads=4, user=None)
    remove_host(path, "cpu-b")
    text = path.read_text()
    assert text.startswith("# my cluster\n")
    assert "# the big one" in text
    inv = load_inventory(path)
    assert [h.name for h in inv.hosts] == ["gpu-a", "new-c"]
    assert inv.hosts[0].threads == 4 and inv.hosts[0].user is None
    assert inv.hosts[1] == HostConfig("new-c", "10.0.0.9", threads=2)
    with pytest.raises(QuorumError, match="already exists"):
        add_host(path, HostConfig("new-c", "x"))
    with pytest.raises(QuorumError, match="no host named 'ghost'"):
        remove_host(path, "ghost")
    with pytest.raises(QuorumError, match="transport: must be"):
        update_host(path, "gpu-a", transport="carrier-pigeon")
    assert load_inventory(path).hosts == inv.hosts


def test_save_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    inv = load_inventory(path)
    inv.hosts.reverse()
    inv.hosts.append(HostConfig("z", "10.1.1.1"))
    inv.connect_timeout = 10
    save_inventory(inv)
    again = load_inventory(path)
    assert [h.name for h in again.hosts] == ["cpu-b", "gpu-a", "z"]
    assert again.connect_timeout == 10
    assert "# the big one" in path.read_text()
    empty = save_inventory(Inventory(tmp_path / "new" / "c.toml", [HostConfig("a", "b")]))
    assert load_inventory(empty.path).hosts == [HostConfig("a", "b")]


def test_cli_add_list_remove_use_the_config_dir(
    quorum_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert default_path() == quorum_dirs["config"] / "cluster.toml"
    assert main(["hosts", "add", "a1", "10.0.0.5", "--user", "bob", "--threads", "3"]) == 0
    assert main(["hosts", "add", "b2", "box", "--transport", "direct", "--rpc-port", "6000"]) == 0
    capsys.readouterr()
    assert main(["hosts", "list"]) == 0
    out = capsys.readouterr().out
    assert "a1" in out and "bob@10.0.0.5" in out and "3 threads" in out and "direct" in out
    assert main(["hosts", "remove", "a1"]) == 0
    assert [h.name for h in load_inventory(None).hosts] == ["b2"]
    assert main(["hosts", "add", "b2", "x"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["hosts", "add", "c3", "x", "--port", "99999"]) == 1
    assert "port: must be between 1 and 65535" in capsys.readouterr().err


def test_cli_config_flag_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["hosts", "list", "--config", str(path), "--json"]) == 0
    assert '"gpu-a"' in capsys.readouterr().out
    bad = write(tmp_path, GOOD.replace('transport = "direct"', 'transport = "x"'))
    assert main(["hosts", "check", "--config", str(bad)]) == 1
    assert f"{bad}:18: hosts[1].transport" in capsys.readouterr().err
    assert main(["up", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "no cluster file" in capsys.readouterr().err


def test_the_sample_cluster_file_is_valid() -> None:
    sample = Path(__file__).parents[2] / "assets" / "cluster.example.toml"
    inv = load_inventory(sample)
    assert [h.name for h in inv.hosts] == ["gpu-a", "cpu-b", "lab-c"]
    assert inv.hosts[2].transport == "direct" and inv.hosts[2].rpc_server
