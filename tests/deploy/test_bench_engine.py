"""`quorum bench engine` runs its three servers side by side and reports the keys it names."""

from __future__ import annotations

import json

import pytest

from quorum_tui.cli import main


def test_bench_engine_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "engine", "--model", "synthetic:layers=6", "--tokens", "4", "--rounds", "1"]
    assert main([*argv, "--prompt-tokens", "40", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("quorum_tps", "llama_server_tps", "single_tps", "ttft_long_s",
                "llama_server_ttft_long_s"):  # fmt: skip
        assert data[key] > 0, key
    assert set(data["aggregate_tps"]) == {"1", "2", "4"}
    assert all(v > 0 for v in data["aggregate_tps"].values())
    assert data["split"] == "2,2,2" and data["long_prompt_tokens"] == 40
    assert data["per_round"][0]["order"] == ["quorum", "by_hand", "single"]


def test_bench_engine_refuses_bad_counts() -> None:
    assert main(["bench", "engine", "--tokens", "1"]) == 1
    assert main(["bench", "engine", "--rounds", "0"]) == 1
