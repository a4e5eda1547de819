"""Pulling from the (fake) Hub: quant tags, split models, resume, checksums, errors, offline."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest

from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.errors import QuorumError
from quorum_tui.models import diskspace, download
from quorum_tui.models.cache import cached_models, repo_dir
from quorum_tui.models.download import Progress
from quorum_tui.models.pull import Pulled, pull, pull_events
from quorum_tui.models.resolve import resolve_model
from quorum_tui.models.spec import parse_spec
from tests.models.conftest import REPO, SPLIT_REPO, header_info
from tests.models.hubserver import GOOD_TOKEN, FakeHub


def do_pull(text: str, events: list[Progress] | None = None) -> Pulled:
    sink = events.append if events is not None else None
    return pull(text, parse_spec(text), sink)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_by_quant_tag_case_insensitive(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    events: list[Progress] = []
    pulled = do_pull(f"{REPO}:q8_0", events)
    source = hub_files["tiny"] / "tiny-Q8_0.gguf"
    assert pulled.path == repo_dir(REPO) / "tiny-Q8_0.gguf"
    assert sha(pulled.path) == sha(source)
    assert pulled.fetched == source.stat().st_size
    assert events[-1].phase == "done" and events[-1].done == source.stat().st_size
    assert any(e.phase == "verify" for e in events)
    assert list(repo_dir(REPO).glob("*.part")) == []
    assert hub.sent["tiny-Q8_0.gguf"] == source.stat().st_size
    assert "tiny-F16.gguf" not in hub.sent


def test_second_pull_reuses_the_cache(hub: FakeHub) -> None:
    do_pull(f"{REPO}:F16")
    sent = hub.sent["tiny-F16.gguf"]
    again = do_pull(f"{REPO}:f16")
    assert again.fetched == 0
    assert hub.sent["tiny-F16.gguf"] == sent


def test_pull_exact_file(hub: FakeHub) -> None:
    pulled = do_pull(f"{REPO}/tiny-F32.gguf")
    assert pulled.path.name == "tiny-F32.gguf"
    assert pulled.path.is_file()


def test_split_model_brings_all_parts(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    pulled = do_pull(f"{SPLIT_REPO}:F32")
    names = [p.name for p in pulled.parts]
    assert names == ["split-F32-00001-of-00002.gguf", "split-F32-00002-of-00002.gguf"]
    assert pulled.path == pulled.parts[0]
    for part in pulled.parts:
        assert sha(part) == sha(hub_files["split"] / part.name)
    whole = inspect_model(hub_files["split_source"])
    assert inspect_model(pulled.path).layer_bytes == whole.layer_bytes
    assert header_info(list(pulled.parts)) == inspect_model(pulled.path)
    listed = cached_models()
    assert [(m.name, m.layers, len(m.parts)) for m in listed] == [(f"{SPLIT_REPO}:F32", 4, 2)]
    assert listed[0].size == sum(p.stat().st_size for p in pulled.parts)


def test_split_model_from_its_first_part_name(hub: FakeHub) -> None:
    pulled = do_pull(f"{SPLIT_REPO}/split-F32-00001-of-00002.gguf")
    assert len(pulled.parts) == 2


def test_resume_after_dropped_connection_fetches_no_byte_twice(
    hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    source = hub_files["tiny"] / "tiny-F32.gguf"
    size = source.stat().st_size
    hub.drop_after["tiny-F32.gguf"] = size // 3
    events: list[Progress] = []
    pulled = do_pull(f"{REPO}:F32", events)
    assert sha(pulled.path) == sha(source)
    assert hub.sent["tiny-F32.gguf"] == size
    fetches = [r for m, p, r in hub.requests if p.startswith("/cdn/") and p.endswith("F32.gguf")]
    assert fetches == [None, f"bytes={size // 3}-"]


def test_resume_in_a_later_pull(
    hub: FakeHub, hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = hub_files["tiny"] / "tiny-F16.gguf"
    size = source.stat().st_size
    cut = size // 2
    hub.drop_after["tiny-F16.gguf"] = cut
    monkeypatch.setattr(download, "RETRIES", 0)
    with pytest.raises(QuorumError, match=r"run the same command again to resume"):
        do_pull(f"{REPO}:F16")
    part = repo_dir(REPO) / "tiny-F16.gguf.part"
    assert part.stat().st_size == cut
    assert not (repo_dir(REPO) / "tiny-F16.gguf").exists()
    events: list[Progress] = []
    pulled = do_pull(f"{REPO}:F16", events)
    assert sha(pulled.path) == sha(source)
    assert pulled.fetched == size - cut
    assert hub.sent["tiny-F16.gguf"] == size
    assert events[0].phase == "hash" and events[0].resumed_from == cut
    assert not part.exists()


def test_interrupted_download_never_looks_complete(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def interrupt(p: Progress) -> None:
        nonlocal calls
        calls += 1
        if p.phase == "download" and p.done > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(download, "CHUNK", 4096)
    spec = f"{REPO}:Q8_0"
    with pytest.raises(KeyboardInterrupt):
        pull(spec, parse_spec(spec), interrupt)
    assert not (repo_dir(REPO) / "tiny-Q8_0.gguf").exists()
    assert (repo_dir(REPO) / "tiny-Q8_0.gguf.part").stat().st_size > 0
    assert cached_models() == []
    assert do_pull(spec).path.is_file()


def test_checksum_mismatch_removes_the_file(hub: FakeHub) -> None:
    hub.corrupt.add("tiny-F32.gguf")
    with pytest.raises(QuorumError, match=r"corrupt: its sha256 is .* bad file was removed"):
        do_pull(f"{REPO}:F32")
    assert list(repo_dir(REPO).glob("tiny-F32.gguf*")) == []
    hub.corrupt.clear()
    assert do_pull(f"{REPO}:F32").path.is_file()


def test_gated_repository_asks_for_hf_token(
    hub: FakeHub, hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_dir("quorum-test/gated", hub_files["tiny"], gated=True)
    with pytest.raises(QuorumError, match=r"gated repository.*set HF_TOKEN"):
        do_pull("quorum-test/gated:Q8_0")
    assert list(repo_dir("quorum-test/gated").glob("*.gguf*")) == []
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert do_pull("quorum-test/gated:Q8_0").path.is_file()


def test_missing_repository(hub: FakeHub) -> None:
    with pytest.raises(QuorumError, match=r"no repository quorum-test/nope .*set HF_TOKEN"):
        do_pull("quorum-test/nope:Q8_0")


def test_missing_file(hub: FakeHub) -> None:
    with pytest.raises(QuorumError, match=r"has no file nothere.gguf; it has: F16"):
        do_pull(f"{REPO}/nothere.gguf")


def test_missing_revision(hub: FakeHub) -> None:
    with pytest.raises(QuorumError, match=r"no revision 'v9'"):
        do_pull(f"{REPO}@v9:Q8_0")


def test_missing_tag_lists_what_the_repository_has(hub: FakeHub) -> None:
    with pytest.raises(QuorumError) as info:
        do_pull(f"{REPO}:Q4_K_M")
    text = str(info.value)
    assert "has no Q4_K_M model" in text
    for tag in ("F16 (tiny-F16)", "F32 (tiny-F32)", "Q8_0 (tiny-Q8_0)"):
        assert tag in text


def test_no_tag_with_several_models_is_an_error(hub: FakeHub) -> None:
    with pytest.raises(QuorumError, match=r"several models: add a quant tag"):
        do_pull(REPO)


def test_no_tag_with_one_model_picks_it(hub: FakeHub) -> None:
    assert len(do_pull(SPLIT_REPO).parts) == 2


def test_ambiguous_tag(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    data = (hub_files["tiny"] / "tiny-Q8_0.gguf").read_bytes()
    hub.add_repo("quorum-test/two", {"a-Q8_0.gguf": data, "b-Q8_0.gguf": data})
    with pytest.raises(QuorumError, match=r"q8_0 matches several models .*a-Q8_0, b-Q8_0"):
        do_pull("quorum-test/two:q8_0")
    assert do_pull("quorum-test/two/b-Q8_0.gguf").path.name == "b-Q8_0.gguf"


def test_disk_space_shortage(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 10 << 20)
    with pytest.raises(QuorumError, match=r"needs .* but only 10.0 MiB is free .*QUORUM_CACHE_DIR"):
        do_pull(f"{REPO}:F32")
    assert "tiny-F32.gguf" not in hub.sent
    assert not list(repo_dir(REPO).glob("*.part"))


def test_offline_uses_the_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    pulled = do_pull(f"{REPO}:Q8_0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    assert do_pull(f"{REPO}:q8_0").path == pulled.path
    assert do_pull(f"{REPO}/tiny-Q8_0.gguf").path == pulled.path
    assert resolve_model(f"{REPO}:Q8_0") == pulled.path
    assert len(hub.requests) == before
    with pytest.raises(QuorumError, match=r"not in the cache and HF_HUB_OFFLINE is set"):
        do_pull(f"{REPO}:F16")
    with pytest.raises(QuorumError, match=r"HF_HUB_OFFLINE"):
        do_pull("quorum-test/other:F16")
    assert len(hub.requests) == before


def test_resolve_model_pulls_once_then_uses_the_cache(hub: FakeHub) -> None:
    seen: list[Progress] = []
    path = resolve_model(f"{REPO}:F16", seen.append)
    assert path.name == "tiny-F16.gguf" and seen
    count = len(hub.requests)
    assert resolve_model(f"{REPO}:f16") == path
    assert len(hub.requests) == count


async def test_pull_events_yields_progress_then_result(hub: FakeHub) -> None:
    spec = f"{SPLIT_REPO}:F32"
    events = [e async for e in pull_events(spec, parse_spec(spec))]
    assert isinstance(events[-1], Pulled)
    done = [e for e in events if isinstance(e, Progress) and e.phase == "done"]
    assert [(e.index, e.count) for e in done] == [(1, 2), (2, 2)]


async def test_pull_events_raises_the_error(hub: FakeHub) -> None:
    spec = "quorum-test/nope:F16"
    with pytest.raises(QuorumError, match=r"no repository"):
        async for _ in pull_events(spec, parse_spec(spec)):
            pass


async def test_leaving_pull_events_cancels_and_keeps_the_part(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)
    hub.slow.add("tiny-F32.gguf")
    spec = f"{REPO}:F32"
    async with contextlib.aclosing(pull_events(spec, parse_spec(spec))) as events:
        async for event in events:
            assert isinstance(event, Progress)
            if event.done > 0:
                break
    part = repo_dir(REPO) / "tiny-F32.gguf.part"
    assert 0 < part.stat().st_size < hub.repos[REPO].sibling("tiny-F32.gguf")["size"] * 10_000
    assert not (repo_dir(REPO) / "tiny-F32.gguf").exists()
    hub.slow.clear()
    pulled = do_pull(spec)
    assert pulled.fetched < pulled.path.stat().st_size


def test_two_pulls_of_one_file_do_not_mix(hub: FakeHub) -> None:
    import fcntl

    base = repo_dir(REPO)
    base.mkdir(parents=True)
    with (base / "tiny-F16.gguf.part.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(QuorumError, match="another Quorum process is downloading tiny-F16"):
            do_pull(f"{REPO}:F16")
    assert do_pull(f"{REPO}:F16").path.is_file()
    assert not (base / "tiny-F16.gguf.part.lock").exists()


def test_unreachable_hub(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from quorum_tui.engine.localcluster import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(QuorumError, match=r"cannot reach http://127.0.0.1:\d+ for quorum-test/x"):
        do_pull("quorum-test/x:Q8_0")
