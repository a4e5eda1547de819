"""The CPU check: the kernels Quorum runs are the ones this machine proved it executes.

The fallback path is forced on every machine with QUORUM_CPU_REFUSE, whose named variants die
of a real SIGILL in their check, as the AMX variant does on a VM that advertises AMX without
supporting it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum_tui.engine.cpucheck import REFUSE_ENV, cpu_verdict, verdict_path
from quorum_tui.engine.llamabuild import BUILD_ENV, LlamaBuild
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.errors import QuorumError
from tests.buildcopy import build_copy

from .conftest import QuorumRunner


@pytest.fixture
def own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaBuild]:
    """The installed build as links in a folder of the test's own, so that verdicts and
    refusals stay there."""
    monkeypatch.setenv(BUILD_ENV, str(build_copy(tmp_path / "build")))
    yield LlamaBuild.installed()


def test_the_check_proves_the_best_variant_that_runs_and_caches_it(own_build: LlamaBuild) -> None:
    verdict = cpu_verdict(own_build)
    assert verdict.variant in own_build.cpu_variants()
    assert Path(verdict.path) == own_build.cpu_variants()[verdict.variant]
    assert "CPU" in verdict.layouts
    chosen = next(r for r in verdict.results if r.variant == verdict.variant)
    assert chosen.status == "passed"
    for better in verdict.results[: verdict.results.index(chosen)]:
        assert better.score >= chosen.score and better.status in ("refused", "unsupported")
    cached = verdict_path(own_build)
    assert json.loads(cached.read_text())["variant"] == verdict.variant
    before = cached.stat().st_mtime_ns
    assert cpu_verdict(own_build) == verdict
    assert cached.stat().st_mtime_ns == before
    assert verdict.summary().startswith(f"CPU kernels: {verdict.variant} (")


def test_a_refused_variant_falls_back_to_the_next_that_runs(
    own_build: LlamaBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    best = cpu_verdict(own_build).variant
    monkeypatch.setenv(REFUSE_ENV, best)
    verdict = cpu_verdict(own_build)
    assert verdict.variant != best
    refused = {r.variant: r.detail for r in verdict.refused}
    assert refused[best].startswith("died of SIGILL")
    assert f"refused: {best} (died of SIGILL" in verdict.summary()
    monkeypatch.delenv(REFUSE_ENV)
    assert cpu_verdict(own_build).variant == best


def test_no_variant_that_runs_is_a_clear_error(
    own_build: LlamaBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REFUSE_ENV, ",".join(own_build.cpu_variants()))
    with pytest.raises(QuorumError, match=r"none of the CPU backends .* runs on this machine"):
        cpu_verdict(own_build)


def test_a_build_without_cpu_modules_says_to_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quorum: QuorumRunner
) -> None:
    variants = LlamaBuild.installed().cpu_variants().values()
    root = build_copy(tmp_path / "build", leave_out=[p.name for p in variants])
    monkeypatch.setenv(BUILD_ENV, str(root))
    with pytest.raises(QuorumError, match=r"no CPU backend modules .* run `make` again"):
        LlamaBuild.installed()
    failed = quorum("run", "synthetic:layers=2", "-p", "x", "-n", "2")
    assert failed.returncode == 1 and "no CPU backend modules" in failed.stderr


def test_a_build_without_rpc_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quorum: QuorumRunner
) -> None:
    monkeypatch.setenv(BUILD_ENV, str(build_copy(tmp_path / "build", ["libggml-rpc.so"])))
    failed = quorum("worker", "--port", "0")
    assert failed.returncode == 1
    assert "has no RPC backend (libggml-rpc.so): run `make` again" in failed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("refuse", [False, True], ids=["proven", "forced-fallback"])
def test_the_coordinator_holds_quantized_layers_with_the_proven_kernels(
    quorum: QuorumRunner,
    real_model_file: Path,
    local_cluster: LocalCluster,
    quorum_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refuse: bool,
) -> None:
    """SmolLM2 (Q4_1) with 10 of its 30 layers on the coordinator: it generates, with the
    variant the check chose, and the report and the coordinator's log say which."""
    best = cpu_verdict().variant
    if refuse:
        monkeypatch.setenv(REFUSE_ENV, best)
    expected = cpu_verdict()
    assert (expected.variant != best) == refuse
    local_cluster.start(2)
    report = tmp_path / "report.json"
    args = ["run", str(real_model_file), "-p", "The capital of France is", "-n", "12"]
    args += ["--split", "10,10,10", "--threads", "1", "--report", str(report)]
    for worker in local_cluster.workers:
        args += ["--worker", worker.endpoint]
    done = quorum(*args, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert expected.summary() in done.stderr
    data = json.loads(report.read_text())
    assert data["cpu_variant"] == expected.variant
    assert data["cpu_kernels"] == expected.summary()
    assert data["stages"][0]["layers"] == [0, 9]
    (log,) = (quorum_dirs["data"] / "logs").glob("coordinator-*.log")
    loaded = [line for line in log.read_text().splitlines() if "loaded CPU backend from" in line]
    assert loaded and all(line.endswith(f"libggml-cpu-{expected.variant}.so") for line in loaded)
    for worker in local_cluster.workers:
        assert expected.summary() in worker.log.read_text()
