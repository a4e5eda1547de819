"""A model no single capped worker can hold runs over three of them; a plan that cannot fit is
refused with its numbers before any weight moves.

Each worker runs inside a memory cgroup of its own capped at 640 MiB (as in a container); the
model is about 800 MiB (12 layers of width 1024, f32): more than one worker, less than three.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quorum_tui.engine.localcluster import LocalWorker, free_port, wait_ready, worker_command
from quorum_tui.lab.cgroups import MemoryCap

from .conftest import QuorumRunner

pytestmark = pytest.mark.slow
CAP = 640 << 20


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[list[tuple[LocalWorker, MemoryCap]]]:
    """Three workers, each alone in a 640 MiB memory cgroup."""
    started: list[tuple[LocalWorker, MemoryCap]] = []
    try:
        for index in range(3):
            cap = MemoryCap.create(f"quorum-test-{free_port()}", CAP)
            port = free_port()
            log = tmp_path / f"w{index + 1}.log"
            argv = cap.wrap([*worker_command(port, threads=2), "--log", f"{log}.native"])
            with log.open("wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            worker = LocalWorker(f"w{index + 1}", port, process, log)
            started.append((worker, cap))
            wait_ready(worker)
        yield started
    finally:
        for worker, cap in started:
            worker.kill()
            cap.remove()


@pytest.fixture(scope="module")
def big_model(make_model: Callable[..., Path]) -> Path:
    return make_model(n_layers=12, n_embd=1024, n_ff=4096, n_head=8, dtype="f32")


def test_a_model_bigger_than_one_capped_worker_runs_over_three(
    quorum: QuorumRunner, capped: list[tuple[LocalWorker, MemoryCap]], big_model: Path
) -> None:
    assert big_model.stat().st_size > CAP
    args = ["run", str(big_model), "-p", "Once upon a time", "-n", "8", "--no-repack"]
    args += ["--threads", "2"]
    alone = quorum(*args, timeout=300)
    assert alone.returncode == 0, alone.stderr
    workers = [a for w, _ in capped for a in ("--worker", w.endpoint)]
    sharded = quorum(*args, *workers, timeout=300)
    assert sharded.returncode == 0, sharded.stderr
    assert "coordinator -, w1 0-3, w2 4-7, w3 8-11+out" in sharded.stderr
    assert sharded.stdout == alone.stdout
    assert [cap.oom_kills() for _, cap in capped] == [0, 0, 0]


def test_a_plan_that_cannot_fit_is_refused_before_any_weight_moves(
    quorum: QuorumRunner,
    capped: list[tuple[LocalWorker, MemoryCap]],
    big_model: Path,
    quorum_dirs: dict[str, Path],
) -> None:
    workers = [a for w, _ in capped for a in ("--worker", w.endpoint)]
    refused = quorum("run", str(big_model), "-p", "x", "--split", "0,10,1,1", *workers)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("quorum:")]
    assert "does not fit, and nothing was loaded" in line
    w1 = capped[0][0]
    assert f"w1 ({w1.endpoint}) needs" in line and "for layers 0-9 (weights" in line
    assert "KV cache" in line and "free" in line and "--split" in line
    assert not list((quorum_dirs["data"] / "logs").glob("coordinator-*")), "nothing loaded"
    plan = quorum("plan", str(big_model), "--split", "0,10,1,1", *workers)
    assert plan.returncode == 0 and "DOES NOT FIT" in plan.stdout
    assert [cap.oom_kills() for _, cap in capped] == [0, 0, 0]
