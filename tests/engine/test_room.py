"""True free memory: the host's MemAvailable and every memory cgroup's room, less a headroom.

The pure reading runs over made-up /proc and /sys trees for cgroup v1, v2 and none; the real
one runs a worker inside a capped memory cgroup of this machine and asks it over RPC.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum_tui.engine.localcluster import LocalWorker, free_port, wait_ready, worker_command
from quorum_tui.engine.probe import probe
from quorum_tui.engine.room import HEADROOM_MIN, headroom, room
from quorum_tui.lab.cgroups import MemoryCap

MIB = 1 << 20
GIB = 1 << 30


def machine(tmp: Path, available: int, total: int, cgroup_lines: list[str]) -> tuple[Path, Path]:
    proc, sys_fs = tmp / "proc", tmp / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal: {total // 1024} kB\nMemFree: 1 kB\nMemAvailable: {available // 1024} kB\n"
    )
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    sys_fs.mkdir()
    return proc, sys_fs


def cgroup(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_no_cgroup_limit_leaves_the_host_figure(tmp_path: Path) -> None:
    proc, sys_fs = machine(tmp_path, 20 * GIB, 24 * GIB, ["0::/", "4:memory:/"])
    here = room(proc, sys_fs)
    assert here.limited_by == "the host" and here.total == 24 * GIB
    assert here.free == 20 * GIB - headroom(24 * GIB)


def test_a_v1_memory_cgroup_binds(tmp_path: Path) -> None:
    proc, sys_fs = machine(tmp_path, 20 * GIB, 24 * GIB, ["4:memory:/pod/worker", "0::/"])
    cgroup(sys_fs / "memory" / "pod" / "worker", {
        "memory.limit_in_bytes": str(640 * MIB),
        "memory.usage_in_bytes": str(200 * MIB),
        "memory.stat": f"cache 1\ntotal_inactive_file {50 * MIB}\n",
    })  # fmt: skip
    cgroup(sys_fs / "memory", {"memory.limit_in_bytes": "9223372036854771712"})
    here = room(proc, sys_fs)
    assert here.limited_by == "cgroup /pod/worker" and here.total == 640 * MIB
    assert here.headroom == HEADROOM_MIN
    assert here.free == 640 * MIB - (200 - 50) * MIB - HEADROOM_MIN


def test_a_v2_ancestor_with_less_room_binds(tmp_path: Path) -> None:
    proc, sys_fs = machine(tmp_path, 20 * GIB, 24 * GIB, ["0::/slice/pod"])
    cgroup(sys_fs / "slice" / "pod", {"memory.max": "max", "memory.current": str(10 * MIB)})
    cgroup(sys_fs / "slice", {
        "memory.max": str(2 * GIB),
        "memory.current": str(1800 * MIB),
        "memory.stat": "inactive_file 0\n",
    })  # fmt: skip
    here = room(proc, sys_fs)
    assert here.limited_by == "cgroup /slice" and here.total == 2 * GIB
    assert here.free == 2 * GIB - 1800 * MIB - headroom(2 * GIB)


KIB = st.integers(0, 64 * GIB // 1024).map(lambda k: k * 1024)
"""/proc/meminfo counts in kB."""


@given(
    available=KIB,
    limit=st.one_of(st.none(), st.integers(1, 64 * GIB)),
    used=st.integers(0, 64 * GIB),
)
def test_the_room_never_exceeds_the_host_or_the_cgroup(
    tmp_path_factory: pytest.TempPathFactory, available: int, limit: int | None, used: int
) -> None:
    total = 64 * GIB
    proc, sys_fs = machine(tmp_path_factory.mktemp("m"), available, total, ["0::/c"])
    files = {"memory.max": str(limit) if limit else "max", "memory.current": str(used)}
    cgroup(sys_fs / "c", files)
    here = room(proc, sys_fs)
    left = available if limit is None else min(available, max(limit - used, 0))
    assert 0 <= here.free <= left
    assert here.free == max(left - here.headroom, 0)
    assert here.total == (total if limit is None else min(total, limit))


def test_a_worker_in_a_capped_cgroup_reports_the_cap(tmp_path: Path) -> None:
    """Asked over RPC (`quorum probe`), a worker capped at 640 MiB says so, less its usage and
    headroom; llama.cpp's own rpc-server there would count all RAM as free."""
    cap = MemoryCap.create(f"quorum-test-{free_port()}", 640 * MIB)
    port = free_port()
    log = tmp_path / "worker.log"
    argv = cap.wrap([*worker_command(port), "--log", str(tmp_path / "native.log")])
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(LocalWorker("capped", port, process, log))
        answer = probe(f"127.0.0.1:{port}")
        assert answer.ok and answer.vouched
        (device,) = answer.devices
        assert device.total == 640 * MIB
        assert 300 * MIB < device.free <= 640 * MIB - headroom(640 * MIB)
        shown = subprocess.run(
            [sys.executable, "-m", "quorum_tui", "probe", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "of 640.0 MiB" in shown.stdout and "cannot vouch" not in shown.stdout
    finally:
        process.kill()
        process.wait(10)
        cap.remove()
    assert cap.oom_kills() == 0


def test_llamas_own_rpc_server_is_not_vouched_for(tmp_path: Path) -> None:
    from quorum_tui.engine.llamabuild import LlamaBuild

    server = LlamaBuild.installed().bin_dir / "ggml-rpc-server"
    port = free_port()
    log = tmp_path / "rpc.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(LocalWorker("upstream", port, process, log))
        answer = probe(f"127.0.0.1:{port}")
        assert answer.ok and not answer.vouched
        shown = subprocess.run(
            [sys.executable, "-m", "quorum_tui", "probe", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "Quorum cannot vouch for it" in shown.stdout
    finally:
        process.kill()
        process.wait(10)
