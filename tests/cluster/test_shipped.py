"""The worker runtime is shipped to hosts whose platform fits, checksummed, never compiled there.

Hosts here have no package index (PIP_NO_INDEX, an empty find-links) and, where a test says so,
no compiler on their PATH.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum_tui.cluster import shipped
from quorum_tui.cluster.bringup import check, down
from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.hostprobe import RUNTIME_NAME, GpuInfo, HostFacts
from quorum_tui.cluster.inventory import load_inventory
from quorum_tui.cluster.runtime import upload
from quorum_tui.cluster.sessions import connect
from quorum_tui.cluster.shipped import LlamaArchive, glibc_version, llama_archive
from quorum_tui.engine.cpucheck import cpu_verdict
from quorum_tui.engine.llamabuild import BUILD_ENV
from quorum_tui.engine.probe import probe_async
from quorum_tui.lab.sshlab import SshLab
from tests.buildcopy import build_copy

from .helpers import pid_alive, states, up

COMPILERS = re.compile(r"^(cc|c\+\+|cpp|gcc|g\+\+|clang|cmake|make|ld)([-.].*)?$|-(gcc|g\+\+|cpp)")


@pytest.fixture
def fresh_lab(tmp_path: Path) -> Iterator[SshLab]:
    """A lab whose hosts have nothing installed."""
    lab = SshLab(tmp_path / "lab", tmp_path / "remote-cache")
    try:
        yield lab
    finally:
        lab.close()


def tools_without_compilers(folder: Path, getconf: str | None = None) -> Path:
    """A PATH directory with this machine's tools but no compiler (and, if given, a getconf
    that answers `getconf` instead)."""
    folder.mkdir()
    for bindir in (Path("/usr/bin"), Path("/usr/sbin")):
        for tool in sorted(bindir.iterdir()):
            if not COMPILERS.search(tool.name) and not (folder / tool.name).exists():
                (folder / tool.name).symlink_to(tool)
    if getconf is not None:
        (folder / "getconf").unlink()
        (folder / "getconf").write_text(f"#!/bin/sh\necho '{getconf}'\n")
        (folder / "getconf").chmod(0o755)
    return folder


async def test_a_bare_host_gets_the_shipped_runtime_and_serves(
    fresh_lab: SshLab, tmp_path: Path, tiny_model: Path
) -> None:
    tools = tools_without_compilers(tmp_path / "tools")
    host = fresh_lab.add("bare", env={"PATH": str(tools)})
    path = fresh_lab.cluster_file([host])
    cluster, events = await up(path)
    try:
        (result,) = cluster.results
        assert result.state == "worker-up", result.reason
        assert result.session is not None
        found = await result.session.run(
            "command -v cc gcc c++ cmake make; echo index=$PIP_NO_INDEX; ls -A $PIP_FIND_LINKS"
        )
        assert str(found.stdout).split() == ["index=1"]
        lines = [e.line for e in events if e.line]
        archive = llama_archive()
        assert any(line.startswith("shipping the llama.cpp runtime (") for line in lines), lines
        runtime = fresh_lab.remote_cache / RUNTIME_NAME
        meta = json.loads((runtime / "runtime.json").read_text())
        assert meta["kind"] == "shipped" and meta["llama"] == archive.id
        assert meta["cpu"] == cpu_verdict().summary()
        log = (runtime / "install.log").read_text()
        assert "pip" not in log and "compiling" not in log
        assert f"unpacking the shipped llama.cpp runtime ({archive.id})" in log
        assert not list(runtime.glob("*.tar.gz")) and not list(runtime.glob("*.part"))
        assert (runtime / f"llama-{archive.id}" / "bin" / "libggml-rpc.so").exists()
        assert result.endpoint is not None and (await probe_async(result.endpoint, 10)).ok
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "quorum_tui", "run", str(tiny_model), "-p", "Once",
             "-n", "8", "--split", "1,4", "--worker", result.endpoint],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    finally:
        await cluster.close()
        await down(load_inventory(path))
    again, events = await up(path)
    await again.close()
    assert states(again) == {"bare": "worker-up"}
    assert not any(e.state == "installing" for e in events)
    await down(load_inventory(path))


@pytest.mark.parametrize("sftp", [True, False], ids=["sftp", "exec"])
async def test_a_corrupted_upload_is_refused_and_deleted(
    fresh_lab: SshLab, tmp_path: Path, sftp: bool
) -> None:
    host = fresh_lab.add("h", sftp=sftp)
    inv = load_inventory(fresh_lab.cluster_file([host]))
    archive = llama_archive()
    data = bytearray(archive.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target = tmp_path / "uploads" / "runtime.tar.gz"
    session = await connect(inv, inv.host("h"))
    try:
        with pytest.raises(HostFailure, match=r"runtime\.tar\.gz\.part did not arrive intact"):
            await upload(session, str(target), bytes(data), lambda line: None, archive.sha256)
    finally:
        await session.close()
    assert not target.exists() and not Path(f"{target}.part").exists()


async def test_a_runtime_whose_files_do_not_match_its_manifest_is_deleted(
    fresh_lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BUILD_ENV, str(build_copy(tmp_path / "build")))
    archive = llama_archive()
    _tamper(archive, "bin/libggml-cpu-x64.so")
    host = fresh_lab.add("h")
    path = fresh_lab.cluster_file([host])
    cluster, _ = await up(path)
    await cluster.close()
    (result,) = cluster.results
    assert result.state == "worker-down"
    assert "the shipped runtime is corrupt (bin/libggml-cpu-x64.so do not match" in result.reason
    runtime = fresh_lab.remote_cache / RUNTIME_NAME
    assert not [p.name for p in runtime.iterdir() if p.name.startswith("llama-")]
    assert not (runtime / "runtime.json").exists()


def _tamper(archive: LlamaArchive, member: str) -> None:
    """Change one file of the packed archive after its manifest was written (and give the
    archive's sidecar the new file's sha256, so only the manifest can tell)."""
    out = io.BytesIO()
    with tarfile.open(archive.path) as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.addfile(info, io.BytesIO(data))
    archive.path.write_bytes(out.getvalue())
    sidecar = archive.path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(out.getvalue()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    shipped._archive.cache_clear()


async def test_a_host_that_does_not_fit_compiles_there_and_says_why(
    fresh_lab: SshLab, tmp_path: Path
) -> None:
    """An old glibc: the runtime would not load there, so the host compiles llama.cpp; here it
    has no package index either, so the install fails, with the reason and pip's words."""
    tools = tools_without_compilers(tmp_path / "tools", getconf="glibc 2.17")
    host = fresh_lab.add("old", env={"PATH": str(tools)})
    cluster, events = await up(fresh_lab.cluster_file([host]))
    await cluster.close()
    (result,) = cluster.results
    why = f"its glibc 2.17 is older than this machine's {glibc_version()}"
    lines = [e.line for e in events if e.line]
    assert f"compiling llama.cpp on the host, because {why}" in lines
    assert result.state == "worker-down"
    assert f"compiling llama.cpp on this host, because {why}" in result.reason
    assert "No matching distribution found for llama-cpp-python==0.3.36" in result.reason


def facts(**fields: object) -> HostFacts:
    base: dict[str, object] = {
        "os": "Linux", "arch": "x86_64", "cores": 2, "mem_total": 1, "mem_available": 1,
        "load": (0.0, 0.0, 0.0), "python": "3.11.7", "python_path": "/usr/bin/python3",
        "cache_dir": "/c", "runtime": None, "glibc": "2.36",
    }  # fmt: skip
    return HostFacts(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, None),
        ({"glibc": "2.39"}, None),
        ({"glibc": "2.36.1"}, None),
        ({"glibc": "2.35"}, "its glibc 2.35 is older than this machine's 2.36"),
        ({"glibc": "2.4"}, "its glibc 2.4 is older than this machine's 2.36"),
        ({"glibc": ""}, "its C library is not glibc (or does not say its version)"),
        ({"arch": "aarch64"}, "it is aarch64, and the shipped runtime is for x86_64"),
        ({"os": "Darwin"}, "it runs Darwin, and the shipped runtime is for Linux"),
        (
            {"gpus": (GpuInfo("NVIDIA H200", 1, 1),)},
            "it has a GPU (NVIDIA H200): its worker is compiled there with CUDA "
            "(the shipped runtime is for CPUs)",
        ),
    ],
)
def test_which_hosts_the_shipped_runtime_fits(fields: dict[str, object], why: str | None) -> None:
    archive = LlamaArchive(Path("/a"), "id", "sha", "x86_64", "2.36")
    assert archive.unfit(facts(**fields)) == why


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_a_remote_worker_killed_by_a_signal_is_named(
    lab: SshLab, sig: signal.Signals
) -> None:
    host = lab.add("victim")
    path = lab.cluster_file([host])
    inv = load_inventory(path)
    first, _ = await up(path)
    await first.close()
    (result,) = first.results
    assert result.pid is not None
    (worker,) = (int(p) for p in subprocess.check_output(["pgrep", "-P", str(result.pid)]).split())
    os.kill(worker, sig)
    while pid_alive(result.pid):
        await asyncio.sleep(0.05)
    checked = await check(inv)
    await checked.close()
    reason = checked.results[0].reason
    words = {
        signal.SIGKILL: "the worker was killed by SIGKILL: most often the kernel's out-of-memory",
        signal.SIGSEGV: "llama.cpp crashed: the worker died of SIGSEGV",
    }
    assert words[sig] in reason and "worker-" in reason
    await down(inv)
