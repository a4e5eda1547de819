"""engine.weights: llama.cpp's FNV-1a (the C extension), a model's weights manifest (which
tensors the workers' cache holds, kept until the files change) and which a stage holds."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quorum_tui.engine import weights
from quorum_tui.engine.ggufheader import read_header
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.weights import (
    HASH_THRESHOLD,
    CachedTensor,
    ModelFile,
    WeightsManifest,
    cache_name,
    compute_manifest,
    fnv1a64,
    manifest,
)
from quorum_tui.errors import QuorumError

SHAPE = {"n_layers": 2, "n_embd": 1024, "n_ff": 4096, "n_head": 8, "n_head_kv": 2, "n_vocab": 512}
"""Feed-forward tensors of 16 MiB (over the threshold), attention ones of 4 MiB (under)."""
AT_THRESHOLD = {"n_layers": 1, "n_embd": 1024, "n_ff": 1024, "n_head": 8, "n_vocab": 2560}
"""token_embd and output of exactly HASH_THRESHOLD bytes (2560 x 1024 f32), the rest 4 MiB."""
OVER_THRESHOLD = {**AT_THRESHOLD, "n_vocab": 2561}
"""token_embd and output one row (4 KiB) over the threshold: the only tensors in the manifest."""

OFFSET_BASIS = 0xCBF29CE484222325
PRIME = 0x100000001B3


def fnv_reference(data: bytes, value: int = OFFSET_BASIS) -> int:
    """64-bit FNV-1a, byte by byte."""
    for byte in data:
        value = ((value ^ byte) * PRIME) & 0xFFFF_FFFF_FFFF_FFFF
    return value


# ----- FNV-1a


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0xCBF29CE484222325), (b"a", 0xAF63DC4C8601EC8C), (b"foobar", 0x85944171F73967E8)],
)
def test_fnv1a64_matches_the_published_test_vectors(data: bytes, expected: int) -> None:
    assert fnv1a64(data) == expected
    assert fnv_reference(data) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_fnv1a64_is_fnv1a_byte_by_byte(data: bytes) -> None:
    assert fnv1a64(data) == fnv_reference(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=512))
def test_fnv1a64_continues_from_a_previous_result(a: bytes, b: bytes) -> None:
    assert fnv1a64(b, fnv1a64(a)) == fnv1a64(a + b) == fnv_reference(b, fnv_reference(a))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=1024), st.data())
def test_fnv1a64_hashes_any_contiguous_buffer_as_its_bytes(
    data: bytes, draw: st.DataObject
) -> None:
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    expected = fnv_reference(data[start:end])
    mapped = mmap.mmap(-1, len(data))
    try:
        mapped[:] = data
        with memoryview(mapped) as view, view[start:end] as piece:
            assert fnv1a64(piece) == expected
        assert fnv1a64(mapped[start:end]) == expected
        with memoryview(data)[start:end] as piece:
            assert fnv1a64(piece) == expected
        assert fnv1a64(bytearray(data)[start:end]) == expected
    finally:
        mapped.close()


def test_fnv1a64_of_a_mapped_file_lets_the_mapping_close(tmp_path: Path) -> None:
    """The C code releases the buffers it is given: a mapping with exports would not close."""
    path = tmp_path / "blob"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        whole = fnv1a64(mapped)
        view = memoryview(mapped)
        piece = view[4096:8192]
        part = fnv1a64(piece)
        piece.release()
        view.release()
        mapped.close()
    assert whole == fnv_reference(data)
    assert part == fnv_reference(data[4096:8192])


def test_fnv1a64_refuses_what_is_not_contiguous_bytes() -> None:
    with pytest.raises(BufferError):
        fnv1a64(memoryview(b"abcdef")[::2])
    with pytest.raises(TypeError):
        fnv1a64("text")


def test_fnv1a64_gives_the_same_answers_from_threads() -> None:
    blobs = [os.urandom(1 << 20) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fnv1a64, blobs)) == [fnv1a64(b) for b in blobs]


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0, "0000000000000000"),
        (1, "0000000000000001"),
        (0xAF63DC4C8601EC8C, "af63dc4c8601ec8c"),
        ((1 << 64) - 1, "ffffffffffffffff"),
    ],
)
def test_cache_names_are_16_lowercase_hex_digits(value: int, name: str) -> None:
    assert cache_name(value) == name


# ----- the manifest of a model


@pytest.fixture(scope="module")
def model(make_model: Callable[..., Path]) -> Path:
    return make_model(**SHAPE)


@pytest.fixture(scope="module")
def over(make_model: Callable[..., Path]) -> Path:
    return make_model(**OVER_THRESHOLD)


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """The files each compute_manifest call hashed."""
    calls: list[list[Path]] = []
    real = weights.compute_manifest

    def counting(files: list[Path]) -> WeightsManifest:
        calls.append(list(files))
        return real(files)

    monkeypatch.setattr(weights, "compute_manifest", counting)
    return calls


def kept(quorum_dirs: dict[str, Path]) -> list[Path]:
    return sorted((quorum_dirs["cache"] / "manifests").glob("*.json"))


def test_the_manifest_lists_exactly_the_tensors_over_the_threshold(model: Path) -> None:
    header = read_header(model)
    content = model.read_bytes()

    made = manifest(model)

    large = [row for row in header.tensors if row.n_bytes > HASH_THRESHOLD]
    assert [t.name for t in made.tensors] == [
        f"blk.{i}.ffn_{kind}.weight" for i in range(2) for kind in ("gate", "up", "down")
    ]
    assert [(t.file, t.name, t.offset, t.size) for t in made.tensors] == [
        (model.name, row.name, row.offset, row.n_bytes) for row in large
    ]
    assert any(HASH_THRESHOLD // 4 <= row.n_bytes <= HASH_THRESHOLD for row in header.tensors)
    for t in made.tensors:
        data = content[t.offset : t.offset + t.size]
        assert t.fnv == cache_name(fnv1a64(data))
        assert t.sha256 == hashlib.sha256(data).hexdigest()
    assert made.model == model.name
    head = hashlib.sha256(content[: header.data_start]).hexdigest()
    assert made.files == (ModelFile(model.name, len(content), header.data_start, head),)
    assert made.cached_bytes == sum(row.n_bytes for row in large)


def test_a_tensor_of_exactly_the_threshold_is_not_cached(
    make_model: Callable[..., Path], over: Path
) -> None:
    at = make_model(**AT_THRESHOLD)
    sizes = {row.name: row.n_bytes for row in read_header(at).tensors}
    assert sizes["token_embd.weight"] == sizes["output.weight"] == HASH_THRESHOLD
    assert manifest(at).tensors == ()

    assert [t.name for t in manifest(over).tensors] == ["token_embd.weight", "output.weight"]


def test_the_manifest_is_kept_and_not_computed_again(
    model: Path, quorum_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = weights.compute_manifest
    calls = []

    def once(files: list[Path]) -> WeightsManifest:
        calls.append(files)
        if len(calls) > 1:
            raise AssertionError("the manifest was computed again")
        return real(files)

    monkeypatch.setattr(weights, "compute_manifest", once)

    first = manifest(model)
    second = manifest(model)

    assert second == first and len(calls) == 1
    assert len(kept(quorum_dirs)) == 1
    assert WeightsManifest.from_json(json.loads(kept(quorum_dirs)[0].read_text())) == first


def test_the_manifest_is_computed_again_when_the_file_changes(
    over: Path, tmp_path: Path, computed: list[list[Path]]
) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(over, copy)
    first = manifest(copy)
    token_embd, output = first.tensors

    with copy.open("r+b") as f:
        f.seek(output.offset + 100)
        f.write(b"\xff\xfe\xfd\xfc")
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = manifest(copy)

    assert len(computed) == 2, "the time changed"
    assert second.tensors[0] == token_embd
    assert second.tensors[1].sha256 != output.sha256 and second.tensors[1].fnv != output.fnv
    assert second.tensors[1].fnv == cache_name(
        fnv1a64(copy.read_bytes()[output.offset : output.offset + output.size])
    )

    same_time = copy.stat().st_mtime_ns
    with copy.open("ab") as f:
        f.write(b"\0" * 32)
    os.utime(copy, ns=(stat.st_atime_ns, same_time))
    third = manifest(copy)

    assert len(computed) == 3, "the size changed"
    assert third.files[0].size == second.files[0].size + 32
    assert third.tensors == second.tensors
    assert manifest(copy) == third and len(computed) == 3


@pytest.mark.parametrize("damage", ["not json", "another version", "a missing field"])
def test_a_damaged_kept_manifest_is_computed_again(
    over: Path, quorum_dirs: dict[str, Path], computed: list[list[Path]], damage: str
) -> None:
    first = manifest(over)
    (path,) = kept(quorum_dirs)
    data = first.to_json()
    if damage == "not json":
        path.write_text('{"version": 1, "mod')
    elif damage == "another version":
        path.write_text(json.dumps({**data, "version": 99}))
    else:
        del data["tensors"][0]["sha256"]
        path.write_text(json.dumps(data))

    assert manifest(over) == first
    assert len(computed) == 2
    assert WeightsManifest.from_json(json.loads(path.read_text())) == first


def test_a_truncated_model_is_refused_naming_the_tensor(over: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cut.gguf"
    shutil.copyfile(over, copy)
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size - 100)

    with pytest.raises(QuorumError) as caught:
        manifest(copy)

    assert str(caught.value) == f"{copy} ends inside tensor output.weight: the file is truncated"


def test_the_manifest_round_trips_through_json(over: Path) -> None:
    made = compute_manifest([over])
    data = json.loads(json.dumps(made.to_json()))
    assert data["version"] == weights.MANIFEST_VERSION
    assert WeightsManifest.from_json(data) == made
    with pytest.raises(ValueError, match="manifest version 2"):
        WeightsManifest.from_json({**data, "version": 2})


@pytest.fixture(scope="module")
def split_model(over: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from tests.models.conftest import write_split

    folder = tmp_path_factory.mktemp("split")
    return write_split(over, folder / "over-00001-of-00002.gguf", 2)


def test_a_split_models_manifest_covers_every_part(
    split_model: list[Path], computed: list[list[Path]]
) -> None:
    first, second = split_model

    made = manifest(first)

    assert computed == [[first, second]]
    assert made.model == first.name
    expected = []
    for part in split_model:
        header = read_header(part)
        head = hashlib.sha256(part.read_bytes()[: header.data_start]).hexdigest()
        assert ModelFile(part.name, part.stat().st_size, header.data_start, head) in made.files
        expected += [
            (part.name, row.name, row.offset, row.n_bytes)
            for row in header.tensors
            if row.n_bytes > HASH_THRESHOLD
        ]
    assert [(t.file, t.name, t.offset, t.size) for t in made.tensors] == expected
    assert {t.file for t in made.tensors} == {first.name, second.name}

    stat = second.stat()
    os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert manifest(first) == made
    assert len(computed) == 2, "a later part's change makes it computed again"


def test_known_manifests_are_those_kept_here(
    model: Path, over: Path, quorum_dirs: dict[str, Path]
) -> None:
    assert weights.known_manifests() == []
    made = [manifest(model), manifest(over)]
    (quorum_dirs["cache"] / "manifests" / "zz-damaged.json").write_text("{")

    found = weights.known_manifests()

    assert sorted(found, key=lambda m: m.model) == sorted(made, key=lambda m: m.model)


# ----- which tensors a stage holds

WORKERS = (WorkerRef("w1", "10.0.0.1:50052"), WorkerRef("w2", "10.0.0.2:50052"))


def hand_made(names: Sequence[str]) -> WeightsManifest:
    tensors = tuple(
        CachedTensor("m.gguf", name, 4096 + i * 100, 100, cache_name(i), f"{i:064x}")
        for i, name in enumerate(names)
    )
    return WeightsManifest("m.gguf", (ModelFile("m.gguf", 9999, 4096, "0" * 64),), tensors)


def layer_names(n_layers: int) -> list[str]:
    return [f"blk.{i}.ffn_{k}.weight" for i in range(n_layers) for k in ("up", "down")]


UNTIED = hand_made(["token_embd.weight", *layer_names(4), "output.weight"])
TIED = hand_made(["token_embd.weight", *layer_names(4)])


def held(m: WeightsManifest, plan: LayerPlan, stage: int) -> list[str]:
    return [t.name for t in m.for_stage(plan, stage)]


def blocks(*layers: int) -> list[str]:
    return [f"blk.{i}.ffn_{k}.weight" for i in layers for k in ("up", "down")]


@pytest.mark.parametrize(
    ("counts", "layers", "output_stage"),
    [
        ((0, 2, 2), ([], [0, 1], [2, 3]), 2),
        ((1, 2, 1), ([0], [1, 2], [3]), 2),
        ((0, 4, 0), ([], [0, 1, 2, 3], []), 1),
        ((2, 0, 2), ([0, 1], [], [2, 3]), 2),
        ((4, 0, 0), ([0, 1, 2, 3], [], []), 0),
    ],
)
def test_each_stage_holds_its_layers_and_the_output_stage_the_output(
    counts: tuple[int, ...], layers: tuple[list[int], ...], output_stage: int
) -> None:
    plan = LayerPlan.from_counts(4, counts, WORKERS)
    assert plan.output_stage == output_stage

    for stage, mine in enumerate(layers):
        out = stage == output_stage
        assert held(UNTIED, plan, stage) == blocks(*mine) + (["output.weight"] if out else [])
        assert held(TIED, plan, stage) == (["token_embd.weight"] if out else []) + blocks(*mine)


def test_with_its_own_output_weight_the_input_embedding_is_on_no_stage() -> None:
    plan = LayerPlan.from_counts(4, (1, 2, 1), WORKERS)
    everywhere = [name for stage in range(3) for name in held(UNTIED, plan, stage)]
    assert "token_embd.weight" not in everywhere
    assert UNTIED.for_layers([], output=True) == (UNTIED.tensors[-1],)
    assert TIED.for_layers([], output=True) == (TIED.tensors[0],)
    assert TIED.for_layers([1, 3], output=False) == tuple(
        t for t in TIED.tensors if t.name.startswith(("blk.1.", "blk.3."))
    )


def stage_counts(n_workers: int) -> st.SearchStrategy[list[int]]:
    """Layer counts for the coordinator and `n_workers` workers."""
    return st.lists(st.integers(0, 5), min_size=n_workers + 1, max_size=n_workers + 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4).flatmap(stage_counts), st.booleans())
def test_the_stages_share_out_the_tensors_exactly_once(counts: list[int], tied: bool) -> None:
    n_layers = sum(counts)
    assume(n_layers > 0)
    workers = [WorkerRef(f"w{i}", f"h{i}:1") for i in range(1, len(counts))]
    plan = LayerPlan.from_counts(n_layers, counts, workers)
    names = ["token_embd.weight", *layer_names(n_layers)] + ([] if tied else ["output.weight"])
    m = hand_made(names)
    owners = plan.assignment()

    stages = [m.for_stage(plan, stage) for stage in range(len(counts))]

    every = [t.name for held_here in stages for t in held_here]
    assert sorted(every) == sorted(n for n in names if tied or n != "token_embd.weight")
    for stage, held_here in enumerate(stages):
        for t in held_here:
            if t.name.startswith("blk."):
                assert owners[int(t.name.split(".")[1])] == stage
            else:
                assert stage == plan.output_stage


def test_a_real_models_stages(model: Path, over: Path) -> None:
    two = LayerPlan.from_counts(2, (0, 1, 1), WORKERS)
    made = manifest(model)
    assert held(made, two, 0) == []
    assert held(made, two, 1) == [f"blk.0.ffn_{k}.weight" for k in ("gate", "up", "down")]
    assert held(made, two, 2) == [f"blk.1.ffn_{k}.weight" for k in ("gate", "up", "down")]

    one = (WorkerRef("w1", "10.0.0.1:50052"),)
    on_worker = LayerPlan.from_counts(1, (0, 1), one)
    assert held(manifest(over), on_worker, 1) == ["output.weight"]
    assert held(manifest(over), on_worker, 0) == []
    at_home = LayerPlan.from_counts(1, (1, 0), one)
    assert held(manifest(over), at_home, 0) == ["output.weight"]
    assert held(manifest(over), at_home, 1) == []
