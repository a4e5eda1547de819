"""`quorum pull`, `quorum models`, `quorum models rm`, and engine commands taking a spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quorum_tui.cli import main
from quorum_tui.models.cache import repo_dir
from tests.models.conftest import REPO, SPLIT_REPO
from tests.models.hubserver import FakeHub


def test_pull_then_list_then_remove(
    hub: FakeHub, hub_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models"]) == 0
    assert "no models in" in capsys.readouterr().out
    assert main(["pull", f"{REPO}:Q8_0"]) == 0
    out, err = capsys.readouterr()
    assert f"{REPO}:Q8_0: {repo_dir(REPO) / 'tiny-Q8_0.gguf'}" in out
    assert "downloaded" in out and "tiny-Q8_0.gguf" in err
    assert main(["pull", f"{SPLIT_REPO}:f32", "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert len(pulled["parts"]) == 2 and pulled["fetched"] > 0

    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(listed) == {f"{REPO}:Q8_0", f"{SPLIT_REPO}:F32"}
    assert (listed[f"{REPO}:Q8_0"]["layers"], listed[f"{REPO}:Q8_0"]["quant"]) == (3, "Q8_0")
    assert listed[f"{SPLIT_REPO}:F32"]["layers"] == 4
    assert listed[f"{SPLIT_REPO}:F32"]["size"] == sum(
        p.stat().st_size for p in hub_files["split"].iterdir()
    )
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "LAYERS", "QUANT", "PATH"]
    assert any(line.startswith(f"{SPLIT_REPO}:F32") and "(2 parts)" in line for line in table)

    assert main(["models", "rm", f"{SPLIT_REPO}:F32"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not repo_dir(SPLIT_REPO).exists()
    assert main(["models", "rm", f"{SPLIT_REPO}:F32"]) == 1
    assert f"no cached model '{SPLIT_REPO}:F32'; the cache holds: {REPO}:Q8_0" in (
        capsys.readouterr().err
    )
    assert main(["models", "rm", f"{REPO}/tiny-Q8_0.gguf"]) == 0
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_pull_errors_are_one_line(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "quorum-test/missing:Q8_0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quorum: no repository quorum-test/missing") and err.count("\n") == 1
    assert main(["pull", "./nowhere.gguf"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_partial_file_is_not_listed(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    base = repo_dir(REPO)
    base.mkdir(parents=True)
    (base / "tiny-F16.gguf.part").write_bytes(b"GGUF" + b"\0" * 100)
    (base / ".quorum-repo.json").write_text("{}")
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_engine_commands_take_a_spec(hub: FakeHub, quorum_dirs: dict[str, Path]) -> None:
    """`quorum inspect` and `quorum run` in a subprocess pull the split model, then load it."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "quorum_tui"]
    spec = f"{SPLIT_REPO}:F32"
    inspect = subprocess.run(
        [*cmd, "inspect", spec, "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["n_layers"] == 4
    assert "split-F32-00001-of-00002.gguf" in inspect.stderr
    report = quorum_dirs["data"] / "report.json"
    run = subprocess.run(
        [*cmd, "run", spec, "-p", "hello", "-n", "4", "--report", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(report.read_text())["completion_tokens"] == 4
