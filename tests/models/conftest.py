"""Fixtures for the model tests: a fake Hub on a local port with synthetic GGUF repositories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.ggufheader import parse_header
from quorum_tui.engine.synthetic import SyntheticSpec, write_synthetic
from quorum_tui.models.cache import REGISTRY_MANIFEST
from quorum_tui.models.preview import describe_headers
from quorum_tui.models.wheels import model_path
from tests.conftest import REAL_MODEL
from tests.models.hubserver import FakeHub, start_hub

REPO = "quorum-test/tiny-GGUF"
SPLIT_REPO = "quorum-test/split-GGUF"


def header_info(parts: list[Path]) -> ModelInfo:
    """A local model described the way a remote preview is: from its parsed headers alone."""
    headers = [parse_header(p.read_bytes()) for p in parts]
    return describe_headers(str(parts[0]), headers, [p.stat().st_size for p in parts])


def write_split(source: Path, first: Path, parts: int) -> list[Path]:
    """Rewrite `source` as a llama.cpp split model: `first` names part 1 (`-00001-of-0000N`)."""
    import gguf

    reader = gguf.GGUFReader(source)
    first.parent.mkdir(parents=True, exist_ok=True)
    stem = first.name.split("-00001-of-")[0]
    per_part = -(-len(reader.tensors) // parts)
    writer = gguf.GGUFWriter(first.with_name(stem + ".gguf"), "llama", split_max_tensors=per_part)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_shape=None, raw_dtype=None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    made = sorted(first.parent.glob(f"{stem}-*-of-*.gguf"))
    assert len(made) == parts, made
    return made


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic repositories: tiny-GGUF (F32/F16/Q8_0 + README), split-GGUF (2 parts)."""
    root = tmp_path_factory.mktemp("hub")
    tiny = root / "tiny"
    for dtype in ("f32", "f16", "q8_0"):
        write_synthetic(tiny / f"tiny-{dtype.upper()}.gguf", SyntheticSpec(n_layers=3, dtype=dtype))
    (tiny / "README.md").write_text("# tiny\nsynthetic test models\n")
    split = root / "split"
    source = write_synthetic(root / "source.gguf", SyntheticSpec(n_layers=4))
    write_split(source, split / "split-F32-00001-of-00002.gguf", 2)
    return {"tiny": tiny, "split": split, "split_source": source}


@pytest.fixture
def hub(hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub holding the synthetic repositories; HF_ENDPOINT points at it."""
    state = FakeHub()
    state.add_dir(REPO, hub_files["tiny"])
    state.add_dir(SPLIT_REPO, hub_files["split"])
    server = start_hub(state)
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these at import: patch the constants it looks at on each call.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", state.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def real_model(real_model_file: Path) -> Path:
    """smollm2-135m in this test's cache, hard-linked from the session's copy."""
    dest = model_path(REAL_MODEL)
    dest.parent.mkdir(parents=True)
    for source in (real_model_file, real_model_file.parent / REGISTRY_MANIFEST):
        os.link(source, dest.parent / source.name)
    return dest
