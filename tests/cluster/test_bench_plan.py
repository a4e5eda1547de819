"""`quorum bench --cluster`: your own plan timed through the cluster file's tunnels."""

from __future__ import annotations

import json
from pathlib import Path

from quorum_tui.cluster.bringup import down
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.lab.sshlab import SshLab

from .helpers import quorum


async def test_bench_times_the_plan_through_the_cluster(lab: SshLab, tiny_model: Path) -> None:
    host = lab.add("bench0")
    path = lab.cluster_file([host])
    done = quorum(
        "bench", "--cluster", str(path), "--model", str(tiny_model), "--split", "2,3",
        "-n", "8", "--repeats", "2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"] == [2, 3]
    assert [w["name"] for w in result["workers"]] == ["bench0"]
    assert result["workers"][0]["endpoint"].startswith("127.0.0.1:")
    assert result["realized"][:5] == [0, 0, 1, 1, 1]
    assert result["tokens_per_s"] > 0 and result["ttft_s"] > 0
    await down(load_inventory(path))


def test_bench_refuses_cluster_and_worker_together(tmp_path: Path, tiny_model: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[hosts]]\nname = "a"\naddress = "127.0.0.1"\n')
    done = quorum(
        "bench", "--cluster", str(cluster), "--worker", "127.0.0.1:1", "--model", str(tiny_model)
    )
    assert done.returncode == 1
    assert "use either --cluster or --worker, not both" in done.stderr
    assert "Traceback" not in done.stderr
