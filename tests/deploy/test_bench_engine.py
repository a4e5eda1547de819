"""`quorum bench engine` and `quorum bench failover` run for real and report the keys they name."""

from __future__ import annotations

import json

import pytest

from quorum_tui.cli import main
from quorum_tui.engine.cpucheck import cpu_verdict


def test_bench_engine_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "engine", "--model", "synthetic:layers=6", "--tokens", "4", "--rounds", "1"]
    assert main([*argv, "--prompt-tokens", "40", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("quorum_tps", "llama_server_tps", "single_tps", "single_no_repack_tps",
                "ratio_repack", "ttft_long_s", "llama_server_ttft_long_s"):  # fmt: skip
        assert data[key] > 0, key
    assert data["cpu_kernels"] == cpu_verdict().summary()
    assert set(data["aggregate_tps"]) == {"1", "2", "4"}
    assert all(v > 0 for v in data["aggregate_tps"].values())
    assert data["split"] == "2,2,2" and data["long_prompt_tokens"] == 40
    assert data["per_round"][0]["order"] == ["quorum", "by_hand", "single", "no_repack"]


def test_bench_engine_refuses_bad_counts() -> None:
    assert main(["bench", "engine", "--tokens", "1"]) == 1
    assert main(["bench", "engine", "--rounds", "0"]) == 1


def test_bench_failover_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "failover", "--model", "synthetic:layers=6", "-n", "40", "--at", "10"]
    assert main([*argv, "--rounds", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pause_s"] > 0 and data["reload_s"] > 0
    assert isinstance(data["target_met"], bool) and data["identical"] is True
    assert data["per_round"][0]["failover_s"] > 0
    assert main(["bench", "failover", "--at", "50", "-n", "40"]) == 1
