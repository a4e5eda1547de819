"""Plain https/http URLs: streamed into the cache with HTTP range resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from quorum_tui.errors import QuorumError
from quorum_tui.models import diskspace, download
from quorum_tui.models.cache import cached_models, url_dir
from quorum_tui.models.download import Downloader, Progress, Target
from quorum_tui.models.pull import pull
from quorum_tui.models.resolve import resolve_model
from quorum_tui.models.spec import parse_spec
from tests.models.hubserver import FakeHub


def model_bytes(hub_files: dict[str, Path]) -> bytes:
    return (hub_files["tiny"] / "tiny-Q8_0.gguf").read_bytes()


def test_url_download(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    data = model_bytes(hub_files)
    hub.plain["m.gguf"] = data
    url = f"{hub.url}/plain/m.gguf"
    seen: list[Progress] = []
    path = resolve_model(url, seen.append)
    assert path == url_dir(url) / "m.gguf"
    assert path.read_bytes() == data
    assert seen[-1].phase == "done"
    assert resolve_model(url) == path
    assert hub.sent["m.gguf"] == len(data)
    [listed] = cached_models()
    assert (listed.name, listed.layers, listed.quant) == (url, 3, "Q8_0")


def test_url_resume_after_drop(
    hub: FakeHub, hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = model_bytes(hub_files)
    hub.plain["m.gguf"] = data
    hub.drop_after["m.gguf"] = 50_000
    url = f"{hub.url}/plain/m.gguf"
    monkeypatch.setattr(download, "RETRIES", 0)
    with pytest.raises(QuorumError, match=r"resume"):
        pull(url, parse_spec(url))
    part = url_dir(url) / "m.gguf.part"
    assert part.stat().st_size == 50_000
    pulled = pull(url, parse_spec(url))
    assert pulled.path.read_bytes() == data
    assert pulled.fetched == len(data) - 50_000
    assert hub.sent["m.gguf"] == len(data)
    assert hub.requests[-1][2] == "bytes=50000-"


def test_url_server_without_ranges_restarts_cleanly(
    hub: FakeHub, hub_files: dict[str, Path], tmp_path: Path
) -> None:
    data = model_bytes(hub_files)
    hub.plain["m.gguf"] = data
    hub.no_ranges.add("m.gguf")
    hub.drop_after["m.gguf"] = 40_000
    dest = tmp_path / "m.gguf"
    target = Target(f"{hub.url}/plain/m.gguf", dest, "m.gguf", len(data))
    with Downloader() as downloader:
        downloader.fetch(target)
    assert dest.read_bytes() == data
    assert hub.sent["m.gguf"] == len(data) + 40_000


def test_changed_file_is_fetched_again_not_spliced(
    hub: FakeHub, hub_files: dict[str, Path], tmp_path: Path
) -> None:
    data = model_bytes(hub_files)
    hub.plain["m.gguf"] = data
    hub.drop_after["m.gguf"] = 30_000
    dest = tmp_path / "m.gguf"
    target = Target(f"{hub.url}/plain/m.gguf", dest, "m.gguf")
    with pytest.raises(QuorumError), Downloader(retries=0) as downloader:
        downloader.fetch(target)
    changed = bytes(reversed(data))
    hub.plain["m.gguf"] = changed
    with Downloader() as downloader:
        downloader.fetch(target)
    assert dest.read_bytes() == changed


def test_url_checksum_when_given(hub: FakeHub, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    hub.plain["x.bin"] = b"x" * 1000
    url = f"{hub.url}/plain/x.bin"
    good = hashlib.sha256(b"x" * 1000).hexdigest()
    with Downloader() as downloader:
        assert downloader.fetch(Target(url, tmp_path / "a", "a", 1000, good)).is_file()
        with pytest.raises(QuorumError, match=r"bad file was removed"):
            downloader.fetch(Target(url, tmp_path / "b", "b", 1000, "0" * 64))
        with pytest.raises(QuorumError, match=r"1000 bytes where 999 were expected"):
            downloader.fetch(Target(url, tmp_path / "c", "c", 999))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_url_404(hub: FakeHub) -> None:
    url = f"{hub.url}/plain/missing.gguf"
    with pytest.raises(QuorumError, match=r"missing.gguf does not exist \(404\)"):
        resolve_model(url)
    assert not (url_dir(url) / "missing.gguf").exists()


def test_unreachable_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from quorum_tui.engine.localcluster import free_port

    monkeypatch.setattr(download, "RETRIES", 1)
    url = f"http://127.0.0.1:{free_port()}/m.gguf"
    with pytest.raises(QuorumError, match=r"stopped at 0 B .*again to resume"):
        pull(url, parse_spec(url))


def test_url_disk_space_shortage(
    hub: FakeHub, hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.plain["m.gguf"] = model_bytes(hub_files)
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1 << 20)
    url = f"{hub.url}/plain/m.gguf"
    with pytest.raises(QuorumError, match=r"m.gguf needs 249.0 KiB but only 1.0 MiB is free"):
        pull(url, parse_spec(url))
    assert [p.name for p in url_dir(url).iterdir()] == [".quorum-url.json"]
