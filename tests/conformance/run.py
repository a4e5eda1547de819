"""Run llama.cpp's server test suite against plain llama-server and against ``quorum serve``.

Both runs serve tests/fixtures/stories260K.gguf offline; Quorum shards it over two local RPC
workers. The suite comes from the llama-cpp-python sdist of the pinned version (PyPI), cached
under build/conformance. Writes build/conformance/conformance.json and exits 1 when a test that
passes on llama-server does not pass on Quorum (outside EXCLUDED).

    .venv/bin/python tests/conformance/run.py [--only test_basic ...] [--modes quorum]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = Path(sys.executable).parent
DEFAULT_OUT = REPO / "build" / "conformance"
FIXTURE = REPO / "tests" / "fixtures" / "stories260K.gguf"
SUITE_IN_TREE = "tools/server/tests"
SUITE_PARTS = (f"{SUITE_IN_TREE}/", "models/templates/")
SPLIT = "1,2,2"
MODES = ("llama-server", "quorum")

TEST_FILES = (
    "test_basic",
    "test_tokenize",
    "test_security",
    "test_metrics",
    "test_completion",
    "test_chat_completion",
    "test_stream",
    "test_compat_anthropic",
    "test_compat_oai_responses",
    "test_ctx_shift",
    "test_ignore_eos",
)

# Only tests of llama-server's own process management (router, models directory, sleep, reload)
# may be listed here, each with its reason; any other difference is a Quorum bug.
EXCLUDED: dict[str, str] = {}


@dataclass
class Outcomes:
    """Per-test outcomes of one mode's run."""

    seconds: float = 0.0
    results: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        """How many tests ended so."""
        return sum(1 for r in self.results.values() if r == outcome)

    def summary(self) -> dict[str, object]:
        """The counts for the report."""
        return {
            "passed": self.count("passed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "seconds": round(self.seconds, 1),
        }


def llama_version() -> str:
    """The installed llama-cpp-python's version (the Makefile's LLAMA_VERSION)."""
    return importlib.metadata.version("llama-cpp-python")


def download_sdist(cache: Path, version: str) -> Path:
    """The llama-cpp-python sdist, from PyPI (or pip's cache) once."""
    found = sorted(cache.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, "-d", str(cache), f"llama-cpp-python=={version}"], check=True)
    return next(cache.glob(f"llama_cpp_python-{version}.tar.gz"))


def wanted(name: str) -> bool:
    """The sdist's files the suite reads: its tests, chat templates and test images."""
    return name.startswith(SUITE_PARTS) or (
        name.startswith("tools/mtmd/") and name.endswith(".jpeg")
    )


def extract_suite(out: Path, version: str) -> Path:
    """llama.cpp's server tests from the sdist, extracted under ``out`` once.

    The suite reads ``../../../models/templates`` and ``../../../tools/mtmd``, so llama.cpp's
    layout is kept.
    """
    tree = out / f"llama.cpp-{version}"
    suite = tree / SUITE_IN_TREE
    if (suite / "utils.py").is_file():
        return suite
    sdist = download_sdist(out / "sdist", version)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    partial = out / f"llama.cpp-{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if name != member.name and member.isfile() and wanted(name):
                member.name = name
                members.append(member)
        tar.extractall(partial, members=members, filter="data")
    if not (partial / SUITE_IN_TREE / "utils.py").is_file():
        raise SystemExit(f"{sdist} has no vendor/llama.cpp/{SUITE_IN_TREE}")
    shutil.rmtree(tree, ignore_errors=True)
    partial.rename(tree)
    return suite


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until something accepts on 127.0.0.1:port (or the worker died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise SystemExit(f"worker on port {port} did not listen within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def workers(out: Path, count: int = 2) -> Iterator[list[str]]:
    """``count`` RPC workers on 127.0.0.1 for the whole session."""
    procs: list[subprocess.Popen[bytes]] = []
    endpoints: list[str] = []
    try:
        for i in range(count):
            port = free_port()
            log = out / f"worker-{i + 1}.log"
            cmd = [str(VENV_BIN / "quorum"), "worker", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--no-cache", "--threads", "1", "--log", str(log)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
            wait_listening(port, procs[-1])
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for proc in procs:
            stop(proc)


def real_llama_server() -> str:
    """The llama-server that Quorum would run here (the proven CPU backend's wrapper)."""
    from quorum_tui.engine.llama_server import server_binary

    return str(server_binary().path)


def write_launcher(out: Path) -> Path:
    """An executable for LLAMA_SERVER_BIN_PATH that execs the shim with this Python."""
    launcher = out / "llama-server-shim"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "shim.py"}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


def case_id(case: ET.Element) -> str:
    """``unit/test_x.py::test_y[param]`` from a junit testcase."""
    classname = case.get("classname", "")
    return f"{classname.replace('.', '/')}.py::{case.get('name', '')}"


def read_junit(path: Path, seconds: float) -> Outcomes:
    """The per-test outcomes in pytest's junit XML."""
    outcomes = Outcomes(seconds=seconds)
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = case_id(case)
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            outcomes.results[tid] = "failed"
            first = (bad.get("message") or bad.text or "").strip().splitlines()
            outcomes.messages[tid] = first[0][:300] if first else ""
        elif case.find("skipped") is not None:
            outcomes.results[tid] = "skipped"
        else:
            outcomes.results[tid] = "passed"
    return outcomes


def run_mode(
    mode: str, suite: Path, out: Path, env: dict[str, str], files: Sequence[str], timeout: int
) -> Outcomes:
    """One pytest run of the suite's files with the shim in ``mode``."""
    junit = out / f"{mode}.xml"
    junit.unlink(missing_ok=True)
    run_env = {
        **env,
        "QUORUM_CONFORMANCE_MODE": mode,
        "PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    cmd = [sys.executable, "-m", "pytest", *(f"unit/{f}.py" for f in files)]
    cmd += ["-p", "offline_plugin", "-p", "no:cacheprovider", "-p", "no:randomly"]
    cmd += [f"--timeout={timeout}", f"--junitxml={junit}", "-q", "-rN", "--tb=short"]
    log = out / f"{mode}.log"
    print(f"[{mode}] pytest on {len(files)} files, log: {log}", flush=True)
    start = time.monotonic()
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=suite, env=run_env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if not junit.is_file():
        raise SystemExit(f"[{mode}] pytest wrote no junit report; see {log}")
    outcomes = read_junit(junit, seconds)
    print(f"[{mode}] {outcomes.summary()}", flush=True)
    return outcomes


def compare(runs: dict[str, Outcomes]) -> dict[str, object]:
    """The report: both counts, the regressions and the tests Quorum passes but llama-server not."""
    report: dict[str, object] = {mode.replace("-", "_"): o.summary() for mode, o in runs.items()}
    report["excluded"] = EXCLUDED
    if set(MODES) <= runs.keys():
        base, ours = runs["llama-server"], runs["quorum"]
        lost = [t for t, r in base.results.items() if r == "passed" and ours.results.get(t) != r]
        report["regressions"] = [t for t in lost if t not in EXCLUDED]
        report["excluded_regressions"] = [t for t in lost if t in EXCLUDED]
        report["regression_errors"] = {t: ours.messages.get(t, "missing") for t in lost}
        report["quorum_only_passes"] = [
            t for t, r in ours.results.items() if r == "passed" and base.results.get(t) != r
        ]
    for mode, o in runs.items():
        report[f"{mode.replace('-', '_')}_failures"] = o.messages
    return report


def print_side_by_side(runs: dict[str, Outcomes], report: dict[str, object]) -> None:
    """Both modes' counts and wall times in one table."""
    print(f"\n{'':10}" + "".join(f"{m:>14}" for m in runs))
    for key in ("passed", "failed", "skipped", "seconds"):
        row = "".join(f"{o.summary()[key]!s:>14}" for o in runs.values())
        print(f"{key:10}{row}")
    regressions = report.get("regressions", [])
    assert isinstance(regressions, list)
    errors = report.get("regression_errors", {})
    assert isinstance(errors, dict)
    if regressions:
        print(f"\n{len(regressions)} regressions (pass on llama-server, not on quorum):")
        for t in regressions:
            print(f"  {t}: {errors.get(t, '')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run both modes, write the JSON report, fail on regressions."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--only", nargs="+", metavar="TEST_FILE", help="a subset of the test files")
    p.add_argument("--timeout", type=int, default=120, help="seconds per test")
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = [f.removesuffix(".py") for f in args.only] if args.only else list(TEST_FILES)
    suite = extract_suite(out, llama_version())
    env = {
        **os.environ,
        "LLAMA_SERVER_BIN_PATH": str(write_launcher(out)),
        "LLAMA_CACHE": str(out / "llama-cache"),
        "QUORUM_CONFORMANCE_MODEL": str(FIXTURE),
        "QUORUM_CONFORMANCE_SERVER": real_llama_server(),
        "QUORUM_CONFORMANCE_QUORUM": str(VENV_BIN / "quorum"),
        "QUORUM_CONFORMANCE_SPLIT": SPLIT,
    }
    runs: dict[str, Outcomes] = {}
    start = time.monotonic()
    with workers(out) as endpoints:
        env["QUORUM_CONFORMANCE_WORKERS"] = ",".join(endpoints)
        for mode in args.modes:
            runs[mode] = run_mode(mode, suite, out, env, files, args.timeout)
    report = compare(runs)
    report["seconds"] = round(time.monotonic() - start, 1)
    report["files"] = files
    (out / "conformance.json").write_text(json.dumps(report, indent=2) + "\n")
    print_side_by_side(runs, report)
    print(f"\nreport: {out / 'conformance.json'} ({report['seconds']} s)")
    return 1 if report.get("regressions") else 0


if __name__ == "__main__":
    sys.exit(main())
