"""The `quorum bench plan` report, from timed trials (the bench itself is too slow for tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorum_tui.bench.plan import _report, layer_cap, print_result
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import WorkerRef
from quorum_tui.engine.planner import ClusterProfile, CostModel, StageProfile
from quorum_tui.engine.trials import Trial, TrialResult


def test_report_has_the_ratios_and_every_run(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = inspect_model(tiny_model)
    refs = [WorkerRef("w1", "127.0.0.1:1"), WorkerRef("w2", "127.0.0.1:2")]
    profile = ClusterProfile(
        StageProfile("coordinator", None, 0.001),
        tuple(StageProfile(r.name, r.endpoint, 0.001, 0.0001, 1e9) for r in refs),
    )
    entries = {
        "planner": Trial("planner", str(tiny_model), [1, 4], ["w2"]),
        "default": Trial("default", str(tiny_model), None),
        "even": Trial("even", str(tiny_model), [0, 3, 2], ["w1", "w2"]),
        "best1": Trial("best1", str(tiny_model), [2, 3], ["w1"]),
    }
    seconds = {"planner": 0.010, "default": 0.020, "even": 0.016, "best1": 0.008}
    timed = {name: TrialResult(entries[name], [s] * 3, [0.05]) for name, s in seconds.items()}
    timed["default"].realized = [1, 1, 1, 2, 2, 2]
    out = _report(info, 512, profile, refs, entries, timed, "best1")
    assert out["planner_tps"] == pytest.approx(100.0)
    assert out["default_tps"] == pytest.approx(50.0)
    assert out["even_tps"] == pytest.approx(62.5)
    assert out["best_tps"] == pytest.approx(125.0)
    assert out["planner_vs_best"] == pytest.approx(0.8)
    assert out["planner_vs_default"] == pytest.approx(2.0)
    assert out["runs"]["planner"]["workers"] == ["w2"]
    assert out["runs"]["default"]["workers"] == ["w1", "w2"]
    assert "predicted_tps" not in out["runs"]["default"]
    assert out["runs"]["even"]["summary"] == "coordinator -, w1 0-2, w2 3-4+out"
    assert out["runs"]["planner"]["predicted_tps"] > 0
    print_result({**out, "elapsed_s": 1.0})
    text = capsys.readouterr().out
    assert "planner 100.0 tokens/s = 0.80 of the best (125.0), 2.00x llama.cpp's default" in text
    assert "llama.cpp default (realized [1, 1, 1, 2, 2, 2])" in text


def test_layer_cap_holds_the_heaviest_window(tiny_model: Path) -> None:
    cost = CostModel(inspect_model(tiny_model), 256)
    cap = layer_cap(cost, 3, True)
    assert cap == cost.memory(2, 3, False, True).total
    assert layer_cap(cost, 2, False) >= cost.memory(0, 2, False, False).total
