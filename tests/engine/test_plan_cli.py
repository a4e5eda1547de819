"""`quorum plan`: stages, memory against free memory, and the llama.cpp parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from quorum_tui.engine.localcluster import LocalCluster

from .conftest import QuorumRunner


def test_plan_json_has_memory_and_parameters(
    quorum: QuorumRunner, shared_workers: LocalCluster, tiny_model: Path
) -> None:
    a, b = shared_workers.workers[:2]
    shown = quorum(
        "plan", str(tiny_model), "--worker", a.endpoint, "--worker", b.endpoint,
        "--split", "1,2,2", "--ctx", "512", "--json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    stages = data["stages"]
    assert [s["layers"] for s in stages] == [[0, 0], [1, 2], [3, 4]]
    assert [s["output"] for s in stages] == [False, False, True]
    assert all(s["fits"] is True and s["free"] > s["memory"]["total"] > 0 for s in stages)
    assert stages[2]["memory"]["weights"] > stages[1]["memory"]["weights"]
    assert data["llama"]["n_gpu_layers"] == 5
    assert data["llama"]["tensor_split"] == [1.5, 3.5]
    assert data["llama"]["devices"] == [a.endpoint, b.endpoint]


def test_plan_text_and_even_default(
    quorum: QuorumRunner, shared_workers: LocalCluster, tiny_model: Path
) -> None:
    a, b = shared_workers.workers[:2]
    shown = quorum("plan", str(tiny_model), "--worker", a.endpoint, "--worker", b.endpoint)
    assert shown.returncode == 0, shown.stderr
    assert "n_gpu_layers=6" in shown.stdout
    assert "layers 0-2" in shown.stdout and "layers 3-4" in shown.stdout
    assert shown.stdout.count("fits") == 3


def test_plan_counts_llama_server_options_that_change_memory(
    quorum: QuorumRunner, shared_workers: LocalCluster, make_model: Callable[..., Path]
) -> None:
    model = make_model(n_layers=4, n_embd=128, n_head=2)
    a = shared_workers.workers[0]
    base = ["plan", str(model), "--worker", a.endpoint, "--split", "1,3", "--json"]
    plain = json.loads(quorum(*base).stdout)
    shown = quorum(*base, "--", "-ctk", "q8_0", "-ctv", "q4_0", "--alias", "small")
    assert shown.returncode == 0, shown.stderr
    small = json.loads(shown.stdout)
    for before, after in zip(plain["stages"], small["stages"], strict=True):
        ratio = after["memory"]["kv_cache"] / before["memory"]["kv_cache"]
        assert ratio == (34 + 18) / 32 / 4
        assert after["memory"]["weights"] == before["memory"]["weights"]
    argv = small["llama_server"]
    assert argv[-4:] == ["-ctk", "q8_0", "-ctv", "q4_0"]
    assert argv[argv.index("--alias") + 1] == "small"
