"""Acceptance: sharded greedy output equals the single-process output, token for token."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quorum_tui.engine.localcluster import LocalCluster

from .conftest import QuorumRunner

PROMPT = "The quorum of workers"
N = 48


@pytest.fixture(scope="module")
def model(make_model: Callable[..., Path]) -> Path:
    return make_model(n_layers=6, n_embd=128, n_head=4, n_head_kv=2, n_vocab=600, seed=3)


@pytest.fixture(scope="module")
def baseline(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import subprocess
    import sys

    report = tmp_path_factory.mktemp("baseline") / "report.json"
    args = ["run", str(model), "-p", PROMPT, "-n", str(N), "--report", str(report)]
    done = subprocess.run(
        [sys.executable, "-m", "quorum_tui", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {"text": done.stdout, "report": json.loads(report.read_text())}


def expected_layers(counts: list[int]) -> list[list[int] | None]:
    out: list[list[int] | None] = []
    first = 0
    for count in counts:
        out.append([first, first + count - 1] if count else None)
        first += count
    return out


def test_baseline_runs_everything_on_the_coordinator(baseline: dict) -> None:
    report = baseline["report"]
    assert report["stages"] == [{"name": "coordinator", "endpoint": None, "layers": [0, 5]}]
    assert report["output_stage"] == 0
    assert report["completion_tokens"] == N
    assert report["prompt_tokens"] > 0 and report["tokens_per_s"] > 0 and report["load_s"] > 0
    assert len(baseline["text"].strip()) > 0


@pytest.mark.parametrize(
    "counts",
    [
        [0, 3, 3],
        [2, 2, 2],
        [1, 5, 0],
        [0, 0, 6],
        [6, 0, 0],
        [0, 2, 2, 2],
        [1, 1, 1, 3],
        [2, 0, 2, 2],
        [0, 3, 3, 0],
    ],
    ids=lambda c: "split-" + "-".join(map(str, c)),
)
def test_sharded_output_matches_single_process(
    quorum: QuorumRunner,
    shared_workers: LocalCluster,
    model: Path,
    baseline: dict,
    tmp_path: Path,
    counts: list[int],
) -> None:
    workers = shared_workers.workers[: len(counts) - 1]
    report_path = tmp_path / "report.json"
    args = ["run", str(model), "-p", PROMPT, "-n", str(N), "--report", str(report_path)]
    for worker in workers:
        args += ["--worker", worker.endpoint]
    args += ["--split", ",".join(map(str, counts))]
    done = quorum(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == baseline["text"]
    report = json.loads(report_path.read_text())
    assert [s["layers"] for s in report["stages"]] == expected_layers(counts)
    assert [s["endpoint"] for s in report["stages"]] == [None, *(w.endpoint for w in workers)]
    last = max(i for i, c in enumerate(counts) if c)
    assert report["output_stage"] == last
    assert report["completion_tokens"] == N


def test_without_split_layers_spread_evenly_over_workers(
    quorum: QuorumRunner, shared_workers: LocalCluster, model: Path, baseline: dict, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    args = ["run", str(model), "-p", PROMPT, "-n", str(N), "--report", str(report_path)]
    for worker in shared_workers.workers[:2]:
        args += ["--worker", worker.endpoint]
    done = quorum(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == baseline["text"]
    report = json.loads(report_path.read_text())
    assert [s["layers"] for s in report["stages"]] == [None, [0, 2], [3, 5]]
    assert "realized split: coordinator -, w1 0-2, w2 3-5+out" in done.stderr
