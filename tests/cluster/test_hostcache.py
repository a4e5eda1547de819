"""The host-side tensor cache (cluster.hostcache) and its coordinator client (cluster.caches).

Small hand-made "models" stand in for GGUF files: a header of random bytes and tensors of
random bytes after it, with a manifest built from them (FNV-1a names, sha256), so every case
runs in milliseconds. A tmpfs of 8 MiB plays the full disk, the fake Hub's plain files the
range-serving URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quorum_tui.cluster import caches, hostcache
from quorum_tui.cluster.caches import (
    FillResult,
    HostCache,
    ModelEntry,
    Source,
    VerifyResult,
    fill_request,
)
from quorum_tui.cluster.hostcache import CacheError
from quorum_tui.engine.weights import (
    CachedTensor,
    ModelFile,
    WeightsManifest,
    cache_name,
    fnv1a64,
)
from quorum_tui.errors import QuorumError
from tests.models.hubserver import FakeHub, start_hub

REPO = Path(__file__).resolve().parents[2]
HEADER = 4096
KB = 100_000
MiB = 1 << 20


# ----- hand-made models


def noise(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class Fake:
    """A model file of random bytes in `folder`, and its manifest."""

    folder: Path
    manifest: WeightsManifest
    data: dict[str, bytes]
    """Tensor name -> its bytes."""

    @property
    def name(self) -> str:
        return self.manifest.model

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def tensors(self) -> tuple[CachedTensor, ...]:
        return self.manifest.tensors

    def files(self, tensors: Sequence[CachedTensor] | None = None) -> dict[str, bytes]:
        """The cache files `tensors` (all by default) make: name -> bytes."""
        chosen = self.tensors if tensors is None else tensors
        return {t.fnv: self.data[t.name] for t in chosen}


def fake_model(folder: Path, file: str, blobs: Sequence[bytes]) -> Fake:
    """Write `file` (a header, then `blobs` as tensors blk.0, blk.1, ...) and its manifest."""
    header = noise(f"header of {file}", HEADER)
    tensors = []
    data = {}
    offset = HEADER
    for i, blob in enumerate(blobs):
        name = f"blk.{i}.ffn_up.weight"
        fnv = cache_name(fnv1a64(blob))
        sha = hashlib.sha256(blob).hexdigest()
        tensors.append(CachedTensor(file, name, offset, len(blob), fnv, sha))
        data[name] = blob
        offset += len(blob)
    folder.mkdir(parents=True, exist_ok=True)
    content = header + b"".join(blobs)
    (folder / file).write_bytes(content)
    files = (ModelFile(file, len(content), HEADER, hashlib.sha256(header).hexdigest()),)
    return Fake(folder, WeightsManifest(file, files, tuple(tensors)), data)


def sized(file: str, *sizes: int) -> list[bytes]:
    return [noise(f"{file} tensor {i}", size) for i, size in enumerate(sizes)]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "rpc-cache"


@pytest.fixture
def model_a(models: Path) -> Fake:
    return fake_model(models, "a.gguf", sized("a", KB, 2 * KB, KB + 7))


def request(
    fake: Fake,
    tensors: Sequence[CachedTensor] | None = None,
    source: Source | None = None,
    limit: int = 0,
) -> dict[str, Any]:
    chosen = fake.tensors if tensors is None else tensors
    return fill_request(fake.manifest, chosen, source or Source("dir", str(fake.folder)), limit)


def fill(
    cache: Path, req: dict[str, Any], stream: bytes = b""
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    result = hostcache.fill(str(cache), req, io.BytesIO(stream), events.append)
    return result, events


def cached(cache: Path) -> dict[str, bytes]:
    """The cache files (named like hashes), name -> bytes."""
    if not cache.exists():
        return {}
    return {p.name: p.read_bytes() for p in cache.iterdir() if hostcache.NAME.match(p.name)}


def temporaries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if ".tmp" in p.name) if cache.exists() else []


def index_of(cache: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cache / hostcache.INDEX).read_text())
    return data


def flip(path: Path, at: int) -> None:
    """Change one byte of `path` in place."""
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x5A]))


# ----- fill from the host's own copy


def test_a_fill_from_a_dir_writes_each_tensor_under_its_fnv_name_and_indexes_it(
    model_a: Fake, cache: Path
) -> None:
    result, events = fill(cache, request(model_a))

    total = sum(t.size for t in model_a.tensors)
    assert result == {
        "model": "a.gguf",
        "tensors": 3,
        "present": 0,
        "present_bytes": 0,
        "written": 3,
        "bytes": total,
        "evicted": 0,
        "source": str(model_a.folder),
    }
    assert cached(cache) == model_a.files()
    for t in model_a.tensors:
        assert t.fnv == cache_name(fnv1a64((cache / t.fnv).read_bytes()))
    assert temporaries(cache) == []
    index = index_of(cache)
    assert index["files"] == {t.fnv: {"sha256": t.sha256, "size": t.size} for t in model_a.tensors}
    assert index["models"]["a.gguf"]["files"] == [t.fnv for t in model_a.tensors]
    assert index["models"]["a.gguf"]["used"] == pytest.approx(time.time(), abs=60)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [KB, 3 * KB, total]
    assert {e["total"] for e in progress} == {total}


def test_a_second_fill_writes_nothing_and_needs_no_source(model_a: Fake, cache: Path) -> None:
    fill(cache, request(model_a))
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    gone = Source("dir", str(model_a.folder / "no-such-folder"))

    result, events = fill(cache, request(model_a, source=gone))

    assert result["present"] == result["tensors"] == 3
    assert (result["written"], result["bytes"], result["source"]) == (0, 0, "")
    assert events == []
    assert cached(cache) == model_a.files()
    assert {n: s for n, s in stamps.items() if hostcache.NAME.match(n)} == {
        p.name: p.stat().st_mtime_ns for p in cache.iterdir() if hostcache.NAME.match(p.name)
    }


def test_a_fill_writes_only_the_tensors_absent_or_of_the_wrong_size(
    model_a: Fake, cache: Path
) -> None:
    first, second, third = model_a.tensors
    fill(cache, request(model_a, [first, second]))
    (cache / second.fnv).write_bytes(model_a.data[second.name][:-10])

    assert [t["name"] for t in hostcache.missing(str(cache), request(model_a))] == [
        second.name,
        third.name,
    ]
    result, _ = fill(cache, request(model_a))

    assert (result["present"], result["written"]) == (1, 2)
    assert result["bytes"] == second.size + third.size
    assert cached(cache) == model_a.files()


def test_missing_of_a_cache_that_does_not_exist_is_everything(model_a: Fake, cache: Path) -> None:
    assert hostcache.missing(str(cache), request(model_a)) == request(model_a)["tensors"]
    assert not cache.exists()


@pytest.mark.parametrize("fault", ["absent", "longer", "shorter", "header"])
def test_a_copy_that_is_not_the_coordinators_file_is_refused_before_anything_is_written(
    model_a: Fake, cache: Path, fault: str
) -> None:
    path = model_a.path
    if fault == "absent":
        path.unlink()
        expected = f"no copy of a.gguf here ({path}: No such file or directory)"
    elif fault in ("longer", "shorter"):
        content = path.read_bytes()
        path.write_bytes(content + b"x" if fault == "longer" else content[:-1])
        size = len(content) + (1 if fault == "longer" else -1)
        expected = (
            f"{path} has {size} bytes and the coordinator's a.gguf {len(content)}: "
            "it is another file or an unfinished copy"
        )
    else:
        flip(path, HEADER // 2)
        expected = f"{path}'s GGUF header differs from the coordinator's model"

    with pytest.raises(CacheError) as caught:
        fill(cache, request(model_a))

    assert str(caught.value) == expected
    assert cached(cache) == {}
    assert temporaries(cache) == []


def test_a_copy_whose_tensor_differs_stops_the_fill_at_that_tensor(
    model_a: Fake, cache: Path
) -> None:
    first, second, third = model_a.tensors
    flip(model_a.path, second.offset + second.size // 2)

    with pytest.raises(CacheError) as caught:
        fill(cache, request(model_a))

    assert str(caught.value) == (
        f"tensor {second.name} from {model_a.folder} differs from the coordinator's model: "
        "that copy is another version or damaged, and is not used"
    )
    assert cached(cache) == model_a.files([first]), "the fill stops at the differing tensor"
    assert not (cache / second.fnv).exists()
    assert temporaries(cache) == []
    assert (
        hostcache.missing(str(cache), request(model_a))
        == request(model_a, [second, third])["tensors"]
    )


def test_an_unknown_source_kind_is_refused(model_a: Fake, cache: Path) -> None:
    req = {**request(model_a), "source": {"kind": "ftp"}}
    with pytest.raises(CacheError, match="unknown source 'ftp'"):
        fill(cache, req)
    assert cached(cache) == {}


# ----- verify


def test_verify_removes_a_corrupted_and_a_truncated_file_and_keeps_the_clean_one(
    model_a: Fake, cache: Path
) -> None:
    fill(cache, request(model_a))
    corrupted, truncated, clean = model_a.tensors
    flip(cache / corrupted.fnv, corrupted.size - 1)
    with (cache / truncated.fnv).open("r+b") as f:
        f.truncate(truncated.size - 1000)
    events: list[dict[str, Any]] = []

    result = hostcache.verify(str(cache), {}, events.append)

    assert sorted(result["bad"]) == sorted([corrupted.fnv, truncated.fnv])
    assert result["checked"] == 3 and result["unknown"] == 0
    assert result["bytes"] == corrupted.size + truncated.size - 1000 + clean.size
    assert cached(cache) == model_a.files([clean])
    assert [e["done"] for e in events] == [1, 2, 3]
    index = index_of(cache)
    assert set(index["files"]) == {clean.fnv}
    assert index["models"]["a.gguf"]["files"] == [clean.fnv]
    assert (
        hostcache.missing(str(cache), request(model_a))
        == request(model_a, [corrupted, truncated])["tensors"]
    )

    refill, _ = fill(cache, request(model_a))
    assert refill["written"] == 2 and cached(cache) == model_a.files()


def test_verify_checks_unindexed_files_against_known_and_keeps_files_nobody_knows(
    model_a: Fake, cache: Path
) -> None:
    good, bad, _ = model_a.tensors
    cache.mkdir()
    (cache / good.fnv).write_bytes(model_a.data[good.name])
    (cache / bad.fnv).write_bytes(model_a.data[good.name][: bad.size])
    stranger = cache / "0123456789abcdef"
    stranger.write_bytes(b"someone else's tensor")
    (cache / "notes.txt").write_text("not a cache file")

    known = {t.fnv: t.sha256 for t in model_a.tensors}
    result = hostcache.verify(str(cache), {"known": known}, lambda _: None)

    assert result == {
        "checked": 2,
        "bytes": good.size + min(bad.size, good.size),
        "bad": [bad.fnv],
        "unknown": 1,
    }
    assert set(cached(cache)) == {good.fnv, stranger.name}
    assert (cache / "notes.txt").exists()

    nothing_known = hostcache.verify(str(cache), {}, lambda _: None)
    assert nothing_known == {"checked": 0, "bytes": 0, "bad": [], "unknown": 2}
    assert set(cached(cache)) == {good.fnv, stranger.name}


async def test_the_client_verifies_against_the_manifests_it_is_given(
    model_a: Fake, cache: Path
) -> None:
    first, second, third = model_a.tensors
    cache.mkdir()
    for t in (first, second):
        (cache / t.fnv).write_bytes(model_a.data[t.name])
    flip(cache / second.fnv, 0)

    result = await HostCache("h1", local=cache).verify([model_a.manifest])

    assert result == VerifyResult(
        checked=2, bytes=first.size + second.size, bad=(second.fnv,), unknown=0
    )
    assert cached(cache) == model_a.files([first])
    assert await HostCache("h1", local=cache).missing(model_a.manifest, model_a.tensors) == [
        second,
        third,
    ]


# ----- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (the tests run as root); skipped where mounting is not allowed."""
    where = tmp_path / "small-disk"
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True, timeout=30)


def test_a_fill_bigger_than_the_free_space_is_refused_up_front(
    models: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostcache, "RESERVE", 0)
    big = fake_model(models, "big.gguf", sized("big", 3 * MiB, 3 * MiB, 3 * MiB))
    cache = small_disk / "rpc-cache"

    with pytest.raises(CacheError) as caught:
        fill(cache, request(big))

    message = str(caught.value)
    assert message.startswith(f"no room in the tensor cache {cache}: its disk has ")
    assert "free, the fill needs 9.0 MiB and leaves 0 B" in message
    assert "Free disk space there or raise the host's cache_gib" in message
    assert message.endswith("nothing was written or evicted")
    assert cached(cache) == {} and temporaries(cache) == []


def test_a_fill_keeps_the_reserve_free(models: Path, small_disk: Path) -> None:
    """6 MiB would fit on the 8 MiB disk, but not with RESERVE (256 MiB) left free."""
    fake = fake_model(models, "six.gguf", sized("six", 2 * MiB, 2 * MiB, 2 * MiB))
    cache = small_disk / "rpc-cache"

    with pytest.raises(
        CacheError, match=r"its disk has .* free, the fill needs 6\.0 MiB and leaves 256\.0 MiB"
    ):
        fill(cache, request(fake))

    assert cached(cache) == {} and temporaries(cache) == []


def test_a_disk_that_fills_up_during_the_write_leaves_no_partial_file(
    models: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The space check passes (the disk says it is huge), then the write itself meets ENOSPC."""
    monkeypatch.setattr(hostcache, "RESERVE", 0)
    plenty = SimpleNamespace(total=1 << 40, used=0, free=1 << 40)
    monkeypatch.setattr(hostcache, "shutil", SimpleNamespace(disk_usage=lambda _: plenty))
    big = fake_model(models, "big.gguf", sized("big", 3 * MiB, 3 * MiB, 3 * MiB))
    first, second, third = big.tensors
    cache = small_disk / "rpc-cache"

    with pytest.raises(CacheError) as caught:
        fill(cache, request(big))

    assert str(caught.value) == (
        f"the disk of {cache} filled up while writing {third.name}: free space there or "
        "lower the host's cache_gib; the partial file was removed"
    )
    assert cached(cache) == big.files([first, second])
    assert temporaries(cache) == []
    assert shutil.disk_usage(small_disk).used <= 6 * MiB + 64 * 1024, "the partial file's space"
    assert set(index_of(cache)["files"]) >= {first.fnv, second.fnv}


def test_a_disk_with_no_space_left_at_all_gives_the_no_room_message(
    model_a: Fake, small_disk: Path
) -> None:
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    cache = small_disk / "rpc-cache"

    with pytest.raises(CacheError, match="no room in the tensor cache"):
        fill(cache, request(model_a))

    assert temporaries(cache) == []


# ----- the limit, least recently used models first


def test_filling_over_the_limit_evicts_the_least_recently_used_other_model(
    models: Path, cache: Path
) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, KB))
    c = fake_model(models, "c.gguf", sized("c", KB, KB))
    b = fake_model(models, "b.gguf", sized("b", KB, KB))
    fill(cache, request(a))
    fill(cache, request(c))

    result, _ = fill(cache, request(b, limit=450_000))

    assert result["evicted"] == 2 and result["written"] == 2
    assert cached(cache) == {**c.files(), **b.files()}, "a, used first, made the room"
    index = index_of(cache)
    assert set(index["models"]) == {"b.gguf", "c.gguf"}
    assert not set(a.files()) & set(index["files"])


def test_eviction_never_takes_the_files_of_the_model_being_filled(
    models: Path, cache: Path
) -> None:
    b = fake_model(models, "b.gguf", sized("b", KB, KB, KB))
    a = fake_model(models, "a.gguf", [b.data[b.tensors[2].name], noise("a only", KB)])
    fill(cache, request(b, b.tensors[:1]))
    fill(cache, request(a))

    result, _ = fill(cache, request(b, limit=3 * KB))

    assert (result["present"], result["written"], result["evicted"]) == (2, 1, 1)
    assert cached(cache) == b.files(), "b's own file (older than a) and the one a shares stay"
    models_now = index_of(cache)["models"]
    assert models_now["a.gguf"]["files"] == [a.tensors[0].fnv], "a keeps the file it shares"


def test_unindexed_files_go_before_any_model_and_the_models_own_unindexed_files_stay(
    models: Path, cache: Path
) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, KB))
    b = fake_model(models, "b.gguf", sized("b", KB, KB))
    fill(cache, request(a))
    stranger = cache / "00000000deadbeef"
    stranger.write_bytes(noise("stranger", KB))
    written_by_llama = cache / b.tensors[0].fnv
    written_by_llama.write_bytes(b.data[b.tensors[0].name])
    for path in (stranger, written_by_llama):
        os.utime(path, (1, 1))

    result, _ = fill(cache, request(b, limit=4 * KB))

    assert (result["present"], result["written"], result["evicted"]) == (1, 1, 1)
    assert not stranger.exists()
    assert cached(cache) == {**a.files(), **b.files()}


def test_a_model_bigger_than_the_limit_is_refused_naming_cache_gib(
    models: Path, cache: Path
) -> None:
    b = fake_model(models, "b.gguf", sized("b", KB, KB, KB))

    with pytest.raises(CacheError) as caught:
        fill(cache, request(b, limit=250_000))

    message = str(caught.value)
    assert f"no room in the tensor cache {cache}: the cache limit is " in message
    assert "and b.gguf's tensors alone need 293.0 KiB" in message
    assert (
        "raise the host's cache_gib in the cluster file; nothing was written or evicted" in message
    )
    assert cached(cache) == {} and temporaries(cache) == []


def test_a_fill_refused_for_the_limit_keeps_the_other_models(models: Path, cache: Path) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, KB))
    b = fake_model(models, "b.gguf", sized("b", KB, KB, KB))
    fill(cache, request(a))

    with pytest.raises(CacheError, match="cache_gib"):
        fill(cache, request(b, limit=250_000))

    assert cached(cache) == a.files()


def test_a_complete_model_fills_on_a_nearly_full_disk(
    models: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, KB))
    c = fake_model(models, "c.gguf", sized("c", KB, KB))
    fill(cache, request(c))
    fill(cache, request(a))
    monkeypatch.setattr(hostcache, "RESERVE", shutil.disk_usage(cache).free + (1 << 30))

    result, _ = fill(cache, request(a))

    assert result["present"] == result["tensors"] == 2 and result["evicted"] == 0
    assert cached(cache) == {**a.files(), **c.files()}


# ----- listing and clearing


async def test_listing_reports_each_model_and_the_files_no_model_claims(
    models: Path, cache: Path
) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, 2 * KB))
    b = fake_model(models, "b.gguf", [a.data[a.tensors[0].name], noise("b", 3 * KB)])
    host = HostCache("h1", local=cache)
    before = await host.listing()
    assert (before.dir, before.models, before.other_files, before.other_bytes) == (
        str(cache),
        (),
        0,
        0,
    ), "no cache dir yet"
    assert before.free > 0, "the free space of the disk the cache will be on"
    assert not cache.exists()
    await host.fill(a.manifest, a.tensors, Source("dir", str(models)))
    await host.fill(b.manifest, b.tensors, Source("dir", str(models)))
    (cache / "00000000deadbeef").write_bytes(b"x" * 10)

    listing = await host.listing()

    assert listing.dir == str(cache) and listing.free > 0
    assert [(m.model, m.files, m.bytes) for m in listing.models] == [
        ("b.gguf", 2, 4 * KB),
        ("a.gguf", 2, 3 * KB),
    ], "most recently used first; the shared file counts for both"
    assert all(isinstance(m, ModelEntry) and m.used > 0 for m in listing.models)
    assert (listing.other_files, listing.other_bytes) == (1, 10)


async def test_clearing_a_model_removes_only_the_files_no_other_model_uses(
    models: Path, cache: Path
) -> None:
    a = fake_model(models, "a.gguf", sized("a", KB, 2 * KB))
    b = fake_model(models, "b.gguf", [a.data[a.tensors[0].name], noise("b", 3 * KB)])
    host = HostCache("h1", local=cache)
    for fake in (a, b):
        await host.fill(fake.manifest, fake.tensors, Source("dir", str(models)))
    stranger = cache / "00000000deadbeef"
    stranger.write_bytes(b"x" * 10)

    assert await host.clear("a.gguf") == (1, 2 * KB)
    assert cached(cache) == {**b.files(), stranger.name: b"x" * 10}
    assert [m.model for m in (await host.listing()).models] == ["b.gguf"]
    assert await host.clear("a.gguf") == (0, 0), "already gone"
    assert await host.clear("never-seen.gguf") == (0, 0)

    assert await host.clear() == (3, 4 * KB + 10)
    assert cached(cache) == {}
    assert index_of(cache)["models"] == {}
    assert (await host.listing()).models == ()


def test_clearing_a_cache_that_does_not_exist_creates_nothing(cache: Path) -> None:
    assert hostcache.clear(str(cache), {}) == {"removed": 0, "bytes": 0}
    assert hostcache.clear(str(cache), {"model": "a.gguf"}) == {"removed": 0, "bytes": 0}
    assert not cache.exists()


# ----- the coordinator's client, in this process


async def test_the_client_fills_from_a_dir_and_reports_progress(model_a: Fake, cache: Path) -> None:
    seen: list[tuple[int, int]] = []

    result = await HostCache("h1", local=cache).fill(
        model_a.manifest,
        model_a.tensors,
        Source("dir", str(model_a.folder)),
        progress=lambda done, total: seen.append((done, total)),
    )
    await asyncio.sleep(0)

    total = sum(t.size for t in model_a.tensors)
    assert result == FillResult("a.gguf", 3, 0, 0, 3, total, 0, str(model_a.folder))
    assert seen == [(KB, total), (3 * KB, total), (total, total)]
    assert cached(cache) == model_a.files()


async def test_the_client_names_the_host_in_a_refusal(model_a: Fake, cache: Path) -> None:
    model_a.path.unlink()
    with pytest.raises(QuorumError, match=r"^h1: no copy of a\.gguf here"):
        await HostCache("h1", local=cache).fill(
            model_a.manifest, model_a.tensors, Source("dir", str(model_a.folder))
        )


def test_fill_request_names_only_the_files_its_tensors_are_in(model_a: Fake) -> None:
    extra = ModelFile("a-00002-of-00002.gguf", 10, 5, "0" * 64)
    manifest = WeightsManifest("a.gguf", (*model_a.manifest.files, extra), model_a.tensors)

    source = Source("url", "http://h/{file}", (("Authorization", "Bearer t"),))
    req = fill_request(manifest, model_a.tensors[1:], source, 7)

    assert req["model"] == "a.gguf" and req["limit_bytes"] == 7
    assert [f["name"] for f in req["files"]] == ["a.gguf"]
    assert [t["name"] for t in req["tensors"]] == [t.name for t in model_a.tensors[1:]]
    assert req["source"] == {
        "kind": "url",
        "url": "http://h/{file}",
        "headers": {"Authorization": "Bearer t"},
    }


# ----- streamed by the coordinator


async def test_a_stream_fill_sends_only_the_tensors_the_host_lacks(
    model_a: Fake, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = model_a.tensors
    fill(cache, request(model_a, [second]))
    sent: list[str] = []
    read = caches.read_tensors

    def recording(folder: Path, tensors: Sequence[CachedTensor]) -> AsyncIterator[bytes]:
        sent.extend(t.name for t in tensors)
        return read(folder, tensors)

    monkeypatch.setattr(caches, "read_tensors", recording)

    result = await HostCache("h1", local=cache).fill(
        model_a.manifest, model_a.tensors, Source("stream"), read_here=model_a.folder
    )

    assert sent == [first.name, third.name]
    assert (result.written, result.bytes) == (2, first.size + third.size)
    assert result.source == "the coordinator"
    assert cached(cache) == model_a.files()
    assert temporaries(cache) == []


async def test_a_stream_from_a_differing_copy_is_refused_naming_the_tensor(
    model_a: Fake, cache: Path
) -> None:
    first, second, _ = model_a.tensors
    flip(model_a.path, second.offset + 5)

    with pytest.raises(QuorumError) as caught:
        await HostCache("h1", local=cache).fill(
            model_a.manifest, model_a.tensors, Source("stream"), read_here=model_a.folder
        )

    assert str(caught.value).startswith(
        f"h1: tensor {second.name} from the coordinator differs from the coordinator's model"
    )
    assert cached(cache) == model_a.files([first])
    assert temporaries(cache) == []


async def test_a_stream_from_a_short_copy_is_refused(model_a: Fake, cache: Path) -> None:
    model_a.path.write_bytes(model_a.path.read_bytes()[:-10])
    with pytest.raises(QuorumError, match=r"a\.gguf ended inside blk\.2\.ffn_up\.weight"):
        await HostCache("h1", local=cache).fill(
            model_a.manifest, model_a.tensors, Source("stream"), read_here=model_a.folder
        )
    assert cached(cache) == {}


async def test_a_stream_fill_never_evicts_the_models_own_tensors(
    model_a: Fake, cache: Path
) -> None:
    first = model_a.tensors[0]
    cache.mkdir()
    own = cache / first.fnv
    own.write_bytes(model_a.data[first.name])
    stranger = cache / "00000000deadbeef"
    stranger.write_bytes(noise("stranger", KB))
    os.utime(own, (1, 1))
    limit = sum(t.size for t in model_a.tensors)

    await HostCache("h1", local=cache).fill(
        model_a.manifest, model_a.tensors, Source("stream"), limit, read_here=model_a.folder
    )

    assert hostcache.missing(str(cache), request(model_a)) == []
    assert not stranger.exists()


async def test_a_stream_fill_reports_and_claims_all_the_models_tensors(
    model_a: Fake, cache: Path
) -> None:
    first = model_a.tensors[0]
    cache.mkdir()
    (cache / first.fnv).write_bytes(model_a.data[first.name])
    host = HostCache("h1", local=cache)

    result = await host.fill(
        model_a.manifest, model_a.tensors, Source("stream"), read_here=model_a.folder
    )
    again = await host.fill(
        model_a.manifest, model_a.tensors, Source("stream"), read_here=model_a.folder
    )

    assert (result.tensors, result.present, result.written) == (3, 1, 2)
    assert (again.tensors, again.present, again.written) == (3, 3, 0)
    listing = await host.listing()
    assert [(m.model, m.files) for m in listing.models] == [("a.gguf", 3)]
    assert listing.other_files == 0


# ----- from a URL, by range


@pytest.fixture
def plain_hub() -> Iterator[FakeHub]:
    """The fake Hub: its /plain/NAME files answer range requests and record them."""
    state = FakeHub()
    server = start_hub(state)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def six(models: Path) -> Fake:
    return fake_model(models, "six.gguf", sized("six", KB, KB + 1, KB + 2, KB + 3, KB + 4, KB))


def url_source(hub: FakeHub) -> Source:
    return Source("url", f"{hub.url}/plain/{{file}}")


def test_a_url_fill_reads_only_the_header_and_the_hosts_tensors(
    six: Fake, cache: Path, plain_hub: FakeHub
) -> None:
    plain_hub.plain[six.name] = six.path.read_bytes()
    mine = six.manifest.for_layers([2, 3], output=False)
    assert [t.name for t in mine] == ["blk.2.ffn_up.weight", "blk.3.ffn_up.weight"]

    result, _ = fill(cache, request(six, mine, url_source(plain_hub)))

    assert result["written"] == 2 and result["source"] == f"{plain_hub.url}/plain/<file>"
    assert plain_hub.requests == [
        ("GET", "/plain/six.gguf", f"bytes=0-{HEADER - 1}"),
        *[("GET", "/plain/six.gguf", f"bytes={t.offset}-{t.offset + t.size - 1}") for t in mine],
    ]
    assert plain_hub.sent[six.name] == HEADER + sum(t.size for t in mine)
    assert cached(cache) == six.files(mine)

    plain_hub.requests.clear()
    again, _ = fill(cache, request(six, six.tensors[:4], url_source(plain_hub)))
    assert (again["present"], again["written"]) == (2, 2)
    assert [r for _, _, r in plain_hub.requests] == [
        f"bytes=0-{HEADER - 1}",
        *[f"bytes={t.offset}-{t.offset + t.size - 1}" for t in six.tensors[:2]],
    ]


def test_a_url_fill_quotes_the_file_name(models: Path, cache: Path, plain_hub: FakeHub) -> None:
    spaced = fake_model(models, "my model #1.gguf", sized("spaced", KB))
    plain_hub.plain[spaced.name] = spaced.path.read_bytes()

    result, _ = fill(cache, request(spaced, source=url_source(plain_hub)))

    assert result["written"] == 1 and cached(cache) == spaced.files()
    assert [p for _, p, _ in plain_hub.requests] == ["/plain/my model #1.gguf"] * 2


def test_a_server_that_ignores_ranges_is_refused(
    six: Fake, cache: Path, plain_hub: FakeHub
) -> None:
    plain_hub.plain[six.name] = six.path.read_bytes()
    plain_hub.no_ranges.add(six.name)

    with pytest.raises(CacheError) as caught:
        fill(cache, request(six, source=url_source(plain_hub)))

    assert str(caught.value) == f"{plain_hub.url}/plain/<file> does not answer range requests"
    assert cached(cache) == {} and temporaries(cache) == []


def test_a_url_whose_header_differs_is_refused(six: Fake, cache: Path, plain_hub: FakeHub) -> None:
    plain_hub.plain[six.name] = six.path.read_bytes()
    plain_hub.corrupt.add(six.name)

    with pytest.raises(CacheError, match="GGUF header differs from the coordinator's model"):
        fill(cache, request(six, source=url_source(plain_hub)))
    assert cached(cache) == {}


def test_a_url_whose_tensor_differs_stops_at_that_tensor(
    six: Fake, cache: Path, plain_hub: FakeHub
) -> None:
    bad = six.tensors[1]
    content = bytearray(six.path.read_bytes())
    content[bad.offset + 3] ^= 1
    plain_hub.plain[six.name] = bytes(content)

    with pytest.raises(CacheError, match=rf"tensor {bad.name} from .* differs"):
        fill(cache, request(six, source=url_source(plain_hub)))

    assert cached(cache) == six.files(six.tensors[:1])
    assert temporaries(cache) == []


class _DropAfterHeader(dict[str, int]):
    """FakeHub.drop_after that spares the first request (the header's)."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__({name: limit})
        self.spared = False

    def pop(self, key: str, default: Any = None) -> Any:
        if not self.spared:
            self.spared = True
            return default
        return super().pop(key, default)


def test_a_reply_cut_short_inside_a_tensor_is_refused(
    six: Fake, cache: Path, plain_hub: FakeHub
) -> None:
    plain_hub.plain[six.name] = six.path.read_bytes()
    plain_hub.drop_after = _DropAfterHeader(six.name, 1000)

    with pytest.raises(CacheError, match="ended its reply early"):
        fill(cache, request(six, source=url_source(plain_hub)))

    assert cached(cache) == {} and temporaries(cache) == []


def test_an_unreachable_or_missing_url_is_refused(
    six: Fake, cache: Path, plain_hub: FakeHub
) -> None:
    with pytest.raises(CacheError, match=r"^cannot read .*/plain/<file>: Not Found$"):
        fill(cache, request(six, source=url_source(plain_hub)))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Source("url", f"http://127.0.0.1:{port}/{{file}}")
    with pytest.raises(CacheError, match=r"^cannot read http://127\.0\.0\.1:\d+/<file>: .*refused"):
        fill(cache, request(six, source=closed))
    assert cached(cache) == {}


# ----- the command hosts run


def hostcache_cli(
    command: str, cache: Path, stdin: bytes = b""
) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "quorum_tui.cluster.hostcache", command, "--cache", str(cache)],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return done.returncode, lines, done.stderr.decode()


def line(req: dict[str, Any]) -> bytes:
    return json.dumps(req).encode() + b"\n"


def test_the_command_lists_an_empty_cache(cache: Path) -> None:
    rc, lines, err = hostcache_cli("list", cache)
    assert (rc, err) == (0, "")
    assert len(lines) == 1 and lines[0].pop("free") > 0
    assert lines == [
        {"event": "done", "models": [], "other_files": 0, "other_bytes": 0, "dir": str(cache)}
    ]
    assert not cache.exists()


def test_the_command_fills_missing_verifies_lists_and_clears(model_a: Fake, cache: Path) -> None:
    rc, lines, err = hostcache_cli("fill", cache, line(request(model_a)))
    assert (rc, err) == (0, "")
    assert [e["event"] for e in lines] == ["progress"] * 3 + ["done"]
    assert lines[-1] == {
        "event": "done",
        "model": "a.gguf",
        "tensors": 3,
        "present": 0,
        "present_bytes": 0,
        "written": 3,
        "bytes": 4 * KB + 7,
        "evicted": 0,
        "source": str(model_a.folder),
    }
    assert cached(cache) == model_a.files()

    (cache / model_a.tensors[1].fnv).unlink()
    rc, lines, _ = hostcache_cli("missing", cache, line(request(model_a)))
    assert (rc, lines) == (0, [{"event": "done", "missing": [model_a.tensors[1].fnv]}])

    flip(cache / model_a.tensors[0].fnv, 0)
    rc, lines, _ = hostcache_cli("verify", cache, line({}))
    assert rc == 0
    assert lines[-1] == {
        "event": "done",
        "checked": 2,
        "bytes": 2 * KB + 7,
        "bad": [model_a.tensors[0].fnv],
        "unknown": 0,
    }

    rc, lines, _ = hostcache_cli("list", cache)
    assert [(m["model"], m["files"]) for m in lines[-1]["models"]] == [("a.gguf", 1)]

    rc, lines, _ = hostcache_cli("clear", cache, line({"model": "a.gguf"}))
    assert (rc, lines) == (0, [{"event": "done", "removed": 1, "bytes": KB + 7}])
    assert cached(cache) == {}


def test_the_command_fills_from_bytes_after_the_request_on_stdin(
    model_a: Fake, cache: Path
) -> None:
    req = {**request(model_a, source=Source("stream")), "exact": True}
    payload = b"".join(model_a.data[t.name] for t in model_a.tensors)

    rc, lines, err = hostcache_cli("fill", cache, line(req) + payload)

    assert (rc, err) == (0, "")
    assert lines[-1]["event"] == "done" and lines[-1]["written"] == 3
    assert cached(cache) == model_a.files()


def test_a_stream_that_ends_early_is_an_error_event(model_a: Fake, cache: Path) -> None:
    req = {**request(model_a, source=Source("stream")), "exact": True}
    payload = b"".join(model_a.data[t.name] for t in model_a.tensors)[:-1]

    rc, lines, err = hostcache_cli("fill", cache, line(req) + payload)

    assert (rc, err) == (1, "")
    assert lines[-1] == {
        "event": "error",
        "message": "the coordinator's stream ended inside blk.2.ffn_up.weight",
    }
    assert cached(cache) == model_a.files(model_a.tensors[:2])
    assert temporaries(cache) == []


def test_a_refused_fill_is_an_error_event_and_exit_status_1(model_a: Fake, cache: Path) -> None:
    model_a.path.unlink()

    rc, lines, err = hostcache_cli("fill", cache, line(request(model_a)))

    assert (rc, err) == (1, "")
    assert lines == [
        {
            "event": "error",
            "message": f"no copy of a.gguf here ({model_a.path}: No such file or directory)",
        }
    ]


@pytest.mark.parametrize("fault", ["not json", "cache is a file", "url without scheme"])
def test_any_failure_of_the_command_is_an_error_event(
    model_a: Fake, cache: Path, fault: str
) -> None:
    stdin = line(request(model_a))
    if fault == "not json":
        stdin = b"{not json\n"
    elif fault == "cache is a file":
        cache = model_a.path
    else:
        stdin = line(request(model_a, source=Source("url", "example.com/{file}")))

    rc, lines, err = hostcache_cli("fill", cache, stdin)

    assert rc == 1
    assert lines and lines[-1]["event"] == "error" and lines[-1]["message"]
    assert "Traceback" not in err


def test_the_command_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Hosts run it with their own python3 and the runtime's copy of quorum_tui alone."""
    probe = (
        "import json, sys; import quorum_tui.cluster.hostcache; "
        "print(json.dumps([m for m in sys.modules if m != '__main__' "
        "and m.split('.')[0] not in sys.stdlib_module_names]))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")},
    )
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)) == [
        "quorum_tui",
        "quorum_tui.cluster",
        "quorum_tui.cluster.hostcache",
    ]


def test_a_cut_short_file_is_removed_even_with_nothing_to_refill_it(
    model_a: Fake, cache: Path
) -> None:
    """llama.cpp writes its own cache files in place: one cut short would load as wrong
    weights, so a fill drops it even when it has no source (llama.cpp pushes it again)."""
    fill(cache, request(model_a))
    short = cache / model_a.tensors[0].fnv
    short.write_bytes(short.read_bytes()[:-1])
    result, _ = fill(cache, request(model_a, source=Source("none")))
    assert not short.exists()
    assert result["present"] == 2 and result["written"] == 0
    assert result["present_bytes"] == sum(t.size for t in model_a.tensors[1:])
