"""GGUF inspection and the synthetic-model generator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.memory import stage_memory, whole_model_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.synthetic import SyntheticSpec, vocabulary, write_synthetic
from quorum_tui.errors import QuorumError

from .conftest import QuorumRunner


def test_inspect_reads_shape_and_bytes(make_model: Callable[..., Path]) -> None:
    path = make_model(n_layers=3, n_embd=64, n_head=4, n_head_kv=2, n_vocab=300)
    info = inspect_model(path)
    n_ff = SyntheticSpec(n_embd=64).resolved().n_ff
    kv_width = 64 // 4 * 2
    matrices = 64 * 64 * 2 + kv_width * 64 * 2 + 3 * 64 * n_ff
    assert (info.architecture, info.n_layers, info.n_embd, info.n_vocab) == ("llama", 3, 64, 300)
    assert (info.n_head, info.n_head_kv, info.n_ff) == (4, 2, n_ff)
    assert info.layer_bytes == (4 * (matrices + 2 * 64),) * 3
    assert info.embedding_bytes == 4 * 300 * 64
    assert info.output_bytes == 4 * (300 * 64 + 64)
    assert info.kv_bytes_per_token_per_layer == 2 * 2 * kv_width
    assert info.quant == "F32"
    assert info.file_bytes == path.stat().st_size


@pytest.mark.parametrize(("dtype", "quant"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_other_dtypes(make_model: Callable[..., Path], dtype: str, quant: str) -> None:
    f32 = inspect_model(make_model(n_layers=2))
    info = inspect_model(make_model(n_layers=2, dtype=dtype))
    assert info.quant == quant
    assert info.layer_bytes[0] < f32.layer_bytes[0]


def test_generator_is_deterministic(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_layers=2, seed=7)
    a = write_synthetic(tmp_path / "a.gguf", spec)
    b = write_synthetic(tmp_path / "b.gguf", spec)
    c = write_synthetic(tmp_path / "c.gguf", SyntheticSpec(n_layers=2, seed=8))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]


def test_vocabulary_has_byte_fallback() -> None:
    tokens, scores, types = vocabulary(400)
    assert len(tokens) == len(scores) == len(types) == 400 == len(set(tokens))
    assert tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    with pytest.raises(QuorumError, match="at least 260"):
        vocabulary(100)


def test_bad_synthetic_shapes_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "models"
    with pytest.raises(QuorumError, match="divisible"):
        write_synthetic(out / "x.gguf", SyntheticSpec(n_embd=66, n_head=4))
    with pytest.raises(QuorumError, match="dtype"):
        write_synthetic(out / "x.gguf", SyntheticSpec(dtype="q4"))
    assert not out.exists()


def test_missing_directory_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(QuorumError, match="does not exist"):
        inspect_model(tmp_path / "nope.gguf")
    with pytest.raises(QuorumError, match="is a directory"):
        inspect_model(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model")
    with pytest.raises(QuorumError, match="not a GGUF file"):
        inspect_model(text)


def test_truncated_file_is_named(tmp_path: Path, tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    for keep in (len(data) - 1000, len(data) // 2, 4096, 40):
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(QuorumError, match=r"truncated|corrupt"):
            inspect_model(cut)


def test_corrupt_header_is_named(tmp_path: Path, tiny_model: Path) -> None:
    data = bytearray(tiny_model.read_bytes())
    data[8:24] = b"\xff" * 16
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(QuorumError, match="corrupt or truncated"):
        inspect_model(bad)


def test_memory_estimate_per_stage(make_model: Callable[..., Path]) -> None:
    info = inspect_model(make_model(n_layers=4))
    refs = [WorkerRef("a", "127.0.0.1:1"), WorkerRef("b", "127.0.0.1:2")]
    plan = LayerPlan.from_counts(4, [1, 3, 0], refs)
    coordinator, first, empty = stage_memory(info, plan, ctx=1024, slots=3)
    assert coordinator.weights == info.layer_bytes[0] + info.embedding_bytes
    assert first.weights == sum(info.layer_bytes[1:]) + info.output_bytes
    assert first.kv_cache == 3 * 1024 * 3 * info.kv_bytes_per_token_per_layer
    assert stage_memory(info, plan, ctx=1024, slots=1)[1].kv_cache * 3 == first.kv_cache
    assert first.compute > coordinator.compute > 0
    assert empty.total == 0
    assert whole_model_memory(info, 1024).weights == info.weight_bytes


def test_inspect_cli(quorum: QuorumRunner, tiny_model: Path, tmp_path: Path) -> None:
    shown = quorum("inspect", str(tiny_model), "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["n_layers"] == 5 and len(data["layer_bytes"]) == 5
    human = quorum("inspect", str(tiny_model))
    assert "KV cache" in human.stdout and "bytes per layer" in human.stdout
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:5000])
    failed = quorum("inspect", str(cut))
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert "truncated" in failed.stderr or "corrupt" in failed.stderr


def test_synth_cli_writes_a_loadable_model(quorum: QuorumRunner, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    made = quorum("synth", str(out), "--layers", "3", "--embd", "32", "--heads", "2")
    assert made.returncode == 0, made.stderr
    assert inspect_model(out).n_layers == 3


def test_the_header_reader_agrees_with_gguf_s_own(tiny_model: Path) -> None:
    from gguf import GGUFReader

    from quorum_tui.engine.ggufheader import MAX_ARRAY_ITEMS_KEPT, read_header

    fixture = Path(__file__).parent.parent / "fixtures" / "stories260K.gguf"
    for path in (tiny_model, fixture):
        reader = GGUFReader(path)
        header = read_header(path)
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            value = field.contents()
            if isinstance(value, list) and value and not isinstance(value[0], str):
                value = value[:MAX_ARRAY_ITEMS_KEPT]
            assert header.fields[name] == value, name
        assert header.tensor_rows() == [
            (t.name, int(t.n_bytes), int(t.data_offset), t.tensor_type.name) for t in reader.tensors
        ]
