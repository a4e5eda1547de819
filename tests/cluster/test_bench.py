"""The SSH benchmarks run end to end on throwaway namespace hosts."""

from __future__ import annotations

import json
import subprocess
import sys

from quorum_tui.cluster.shipped import llama_archive


def bench(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "quorum_tui", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bench_tunnel_reports_both_paths_side_by_side() -> None:
    result = bench("tunnel", "--lab", "2", "--rounds", "1", "-n", "8")
    assert result["tunnel_tps"] > 0 and result["direct_tps"] > 0  # type: ignore[operator]
    assert result["ratio"] == result["tunnel_tps"] / result["direct_tps"]  # type: ignore[operator]
    assert result["round_ratios"] == [result["ratio"]]
    rtt = result["rtt_us"]
    assert isinstance(rtt, dict) and set(rtt) == {
        "direct",
        "openssh",
        "asyncssh",
        "without_session",
    }
    assert all(us > 0 for us in rtt.values())


def test_bench_bringup_compares_all_hosts_with_one() -> None:
    result = bench("bringup", "--lab", "2", "--rounds", "1")
    assert result["hosts"] == 2
    assert result["cold_installed"] is True and result["cold_s"] > 0  # type: ignore[operator]
    assert result["runtime_bytes"] == llama_archive().path.stat().st_size
    assert result["all_s"] > 0 and result["one_s"] > 0  # type: ignore[operator]
    assert result["cpu_s_per_host_all"] > 0 and result["cpu_s_per_host_one"] > 0  # type: ignore[operator]
    load = result["load_average"]
    assert isinstance(load, list) and len(load) == 3


def test_bench_spec_times_plain_and_ngram_over_delayed_links() -> None:
    result = bench(
        "spec", "--lab", "2", "--model", "synthetic:layers=4", "-n", "24", "--rounds", "1"
    )
    assert result["delay_ms"] == 1.0 and result["spec_mode"] == "ngram"
    for key in ("plain_tps", "spec_tps", "acceptance", "identical"):
        assert key in result, key
    assert result["plain_tps"] > 0 and result["spec_tps"] > 0  # type: ignore[operator]
    table = result["table"]
    assert isinstance(table, list)
    assert {(r["mode"], r["workload"]) for r in table} == {
        (mode, workload) for mode in ("plain", "ngram") for workload in ("rewrite", "free")
    }
    assert all(r["tokens_per_pass"] >= 1 for r in table if r["mode"] == "ngram")
    assert isinstance(result["identical"], bool)


def test_bench_scale_runs_a_model_no_capped_host_can_hold() -> None:
    result = bench("scale", "-n", "8")
    assert result["hosts"] == 3 and result["cap_bytes"] == 640 << 20
    model, cap = result["model_bytes"], result["cap_bytes"]
    assert isinstance(model, int) and isinstance(cap, int) and 1.5 * cap < model < 3 * cap
    for key in ("bringup_s", "load_s", "decode_tps", "predicted_tps", "load_bound_s"):
        assert result[key] > 0, key  # type: ignore[operator]
    assert result["load_bytes"] > model * 0.3  # type: ignore[operator]
    failover = result["failover"]
    assert isinstance(failover, dict)
    assert failover["outcome"] in ("completed", "ended with the error")
    if failover["outcome"] != "completed":
        assert "cannot hold the model" in failover["reason"]
    assert result["oom_kills"] == 0


def test_bench_load_compares_pushed_and_home_loads_and_both_failovers() -> None:
    result = bench("load", "--layers", "2", "--rate-mbit", "400", "-n", "32")
    assert result["hosts"] == 2 and result["layers"] == 2 and result["rate_mbit"] == 400.0
    for key in ("pushed_load_s", "home_load_s", "home_fill_s", "reload_s", "staging_s"):
        assert result[key] > 0, key  # type: ignore[operator]
    model, pushed, home = result["model_bytes"], result["pushed_bytes"], result["home_bytes"]
    assert isinstance(model, int) and isinstance(pushed, int) and isinstance(home, int)
    assert model > 300_000_000 and pushed > 0.9 * model
    assert home < pushed / 3, (home, pushed)
    assert result["home_ratio"] == result["home_load_s"] / result["pushed_load_s"]  # type: ignore[operator]
    staged = result["staged"]
    assert isinstance(staged, dict) and staged["lab1"]["cached"] == staged["lab1"]["total"] > 0
    failover, pause = result["failover"], result["failover_pause_s"]
    assert isinstance(failover, dict) and isinstance(pause, dict)
    assert set(failover) == set(pause) == {"staged", "unstaged"}
    for kind, outcome in failover.items():
        assert outcome["outcome"] == "completed", (kind, outcome)
        assert outcome["victim"] == "lab2", outcome
        assert outcome["plan_after"] == "coordinator -, lab1 0-1+out", outcome
        assert pause[kind] == outcome["pause_s"] > 0
    assert failover["staged"]["bytes"] < failover["unstaged"]["bytes"] / 3, failover
