"""The worker runtime on a host: llama.cpp's worker libraries plus this package's code.

Layout under the remote cache dir (`$QUORUM_CACHE_DIR`, else `$XDG_CACHE_HOME/quorum`, else
`~/.cache/quorum`), in `runtime-<version>/`:
- `llama-<id>/`: the shipped runtime (cluster.shipped), unpacked and each file checked against
  its manifest; or, on a host it does not fit, `venv/` with llama-cpp-python compiled there;
- `app/`: this package's code (and platformdirs, its one dependency on a worker);
- `worker`: the command that runs the worker (`python3 -m quorum_tui.cluster.agent`, with the
  build to use), recording the status it exits with in the worker's log;
- `runtime.json` (written last) and `install.log`.
Installs on a shared home directory are serialised with a file lock. Before the runtime counts
as installed, its worker command proves which CPU backend the host really runs (--check).

Uploads go over SFTP or, where sshd has no SFTP subsystem, down the stdin of `cat` on an exec
channel. Either way a file lands as `NAME.part`, the host checks its sha256 (`sha256sum`, else
python3) and only then renames it into place; a mismatch deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import secrets
import shlex
import tarfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

import asyncssh

from quorum_tui.cluster.events import HostFailure
from quorum_tui.cluster.hostprobe import PROTOCOL_TEXT, HostFacts
from quorum_tui.cluster.sessions import HostSession, command_failures
from quorum_tui.cluster.shipped import LLAMA_VERSION, LlamaArchive, llama_archive

TAIL_LINES = 15
UPLOAD_TIMEOUT = 300.0
MISMATCH = 3
HASH_PY = "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
APP_PACKAGES = ("quorum_tui", "platformdirs")
"""The Python packages a worker imports; platformdirs is pure Python."""
SOURCE_CMAKE = "-DGGML_RPC=on -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"

LAUNCHER = """#!/bin/sh
# Quorum's worker on this host. It runs as this shell's child, which forwards a stop to it,
# and writes how it ended to the log (a signal shows as 128 + its number); the worker ends
# with this shell (--exit-with-parent).
trap 'kill -TERM $child 2>/dev/null' TERM INT HUP
@ENV@ @PYTHON@ -m quorum_tui.cluster.agent --exit-with-parent "$@" &
child=$!
wait $child
status=$?
while kill -0 $child 2>/dev/null; do wait $child; status=$?; done
echo "quorum: the worker exited with status $status"
exit $status
"""

INSTALL_SCRIPT = r"""
import fcntl, hashlib, json, os, shutil, subprocess, sys, sysconfig, tarfile
rt, kind, archive, llama_id, app_tar, app_hash, cuda, llama, protocol, why = sys.argv[1:11]
LAUNCHER = @LAUNCHER@
os.makedirs(rt, exist_ok=True)
log = open(os.path.join(rt, "install.log"), "a")
def say(text):
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()
def fail(text, code=1):
    say(text)
    for upload in (archive, app_tar):
        if upload and os.path.exists(upload):
            os.remove(upload)
    sys.exit(code)
def run(cmd, env=None):
    say("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})))
    for line in proc.stdout:
        say(line.rstrip())
    if proc.wait():
        fail("failed with exit status %d" % proc.returncode)
def unpack(tar_path, dest):
    with tarfile.open(tar_path) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
lock = open(os.path.join(rt, ".lock"), "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    say("another install is running here: waiting for it")
    fcntl.flock(lock, fcntl.LOCK_EX)
meta_path = os.path.join(rt, "runtime.json")
try:
    meta = json.load(open(meta_path))
except (OSError, ValueError):
    meta = {}
if os.path.exists(meta_path):
    os.remove(meta_path)
if kind == "shipped":
    build = os.path.join(rt, "llama-" + llama_id)
    python = sys.executable
    if not os.path.isdir(build) and not archive:
        fail("the shipped runtime %s is missing here: bring the host up again to upload it" %
             llama_id, 6)
    if not os.path.isdir(build):
        say("unpacking the shipped llama.cpp runtime (%s)" % llama_id)
        tmp = build + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unpack(archive, tmp)
        files = json.load(open(os.path.join(tmp, "manifest.json")))["files"]
        bad = [n for n, want in sorted(files.items()) if sha256(os.path.join(tmp, n)) != want]
        if bad:
            shutil.rmtree(tmp, ignore_errors=True)
            fail("the shipped runtime is corrupt (%s do not match the manifest): deleted" %
                 ", ".join(bad), 4)
        os.rename(tmp, build)
    for old in os.listdir(rt):
        if (old.startswith("llama-") and old != os.path.basename(build)) or old == "venv":
            shutil.rmtree(os.path.join(rt, old), ignore_errors=True)
    if archive:
        os.remove(archive)
else:
    say("compiling llama.cpp on this host, because " + why)
    venv = os.path.join(rt, "venv")
    python = os.path.join(venv, "bin", "python")
    built = meta.get("kind") == "source" and meta.get("protocol") == protocol
    if not built or not os.path.exists(python):
        run([sys.executable, "-m", "venv", "--clear", venv])
        cmake = "__SOURCE_CMAKE__" + (" -DGGML_CUDA=on" if cuda == "1" else "")
        run([python, "-m", "pip", "install", "--no-cache-dir", "llama-cpp-python==" + llama],
            {"CMAKE_ARGS": cmake, "PIP_PROGRESS_BAR": "off"})
    where = "import sysconfig; print(sysconfig.get_paths()['platlib'])"
    build = subprocess.run([python, "-c", where], capture_output=True, text=True,
                           check=True).stdout.strip()
if meta.get("app") != app_hash or not os.path.isdir(os.path.join(rt, "app")):
    say("unpacking Quorum's code (%s)" % app_hash[:12])
    app = os.path.join(rt, "app")
    shutil.rmtree(app, ignore_errors=True)
    unpack(app_tar, app)
os.remove(app_tar)
launcher = os.path.join(rt, "worker")
def quote(text):
    return "'" + text.replace("'", "'\\''") + "'"
env = "PYTHONPATH=%s QUORUM_LLAMA_BUILD=%s" % (quote(os.path.join(rt, "app")), quote(build))
with open(launcher + ".tmp", "w") as f:
    f.write(LAUNCHER.replace("@ENV@", env).replace("@PYTHON@", quote(python)))
os.chmod(launcher + ".tmp", 0o755)
os.replace(launcher + ".tmp", launcher)
check = subprocess.run([launcher, "--check"], capture_output=True, text=True)
lines = [line for line in (check.stdout + check.stderr).splitlines()
         if line.strip() and not line.startswith("quorum: the worker exited")]
if check.returncode != 0:
    fail("the runtime does not run on this host: " + (lines[-1] if lines else "no output"), 5)
say(lines[-1])
meta = {"protocol": protocol, "llama_cpp": llama, "rpc": True, "cuda": cuda == "1", "kind": kind,
        "llama": llama_id if kind == "shipped" else "", "app": app_hash, "cpu": lines[-1]}
json.dump(meta, open(meta_path + ".tmp", "w"))
os.replace(meta_path + ".tmp", meta_path)
del lock
say("runtime ready: %s" % rt)
""".replace("__SOURCE_CMAKE__", SOURCE_CMAKE).replace("@LAUNCHER@", repr(LAUNCHER))


@cache
def app_tarball() -> tuple[bytes, str]:
    """The code a worker runs (this package, platformdirs; no caches) as a tar.gz, and its
    content hash."""
    files: list[tuple[str, Path]] = []
    for package in APP_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        root = Path(spec.origin).parent
        files += [
            (str(Path(package) / p.relative_to(root)), p)
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and "__pycache__" not in p.parts
            and p.suffix in {".py", ".tcss", ".typed"}
        ]
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, path in files:
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()


def runtime_current(facts: HostFacts) -> bool:
    """The host's runtime is installed, proven, and of this code and (where it fits) build."""
    rt = facts.runtime or {}
    if not facts.runtime_ok or rt.get("app") != app_tarball()[1]:
        return False
    if rt.get("kind") == "source":
        return _unfit(facts) is not None
    return rt.get("llama") == llama_archive().id


def _unfit(facts: HostFacts) -> str | None:
    return llama_archive().unfit(facts)


async def ensure_runtime(
    session: HostSession, facts: HostFacts, on_line: Callable[[str], None]
) -> str:
    """Install or update the runtime if needed; return its worker command."""
    if runtime_current(facts):
        return facts.launcher
    if facts.python is None or facts.python_path is None:
        raise HostFailure("worker-down", "the host has no python3 to run a worker with")
    archive = await asyncio.to_thread(llama_archive)
    why = archive.unfit(facts)
    data, digest = app_tarball()
    token = secrets.token_hex(4)
    tarball = f"{facts.runtime_dir}/upload-{digest[:12]}-{token}.tar.gz"
    await upload(session, tarball, data, on_line)
    shipped = ""
    rt = facts.runtime or {}
    if why is None and (rt.get("llama") != archive.id or rt.get("kind") != "shipped"):
        shipped = f"{facts.runtime_dir}/llama-{archive.id}-{token}.tar.gz"
        on_line(f"shipping the llama.cpp runtime ({archive.path.stat().st_size / 2**20:.1f} MiB)")
        await upload_archive(session, shipped, archive, on_line)
    elif why is not None:
        on_line(f"compiling llama.cpp on the host, because {why}")
    args = [
        facts.runtime_dir,
        "shipped" if why is None else "source",
        shipped,
        archive.id,
        tarball,
        digest,
        "1" if facts.gpus else "0",
        LLAMA_VERSION,
        PROTOCOL_TEXT,
        why or "",
    ]
    command = f"python3 -u -c {shlex.quote(INSTALL_SCRIPT)} " + " ".join(map(shlex.quote, args))
    status, lines = await session.stream(command, on_line)
    if status != 0:
        tail = "\n".join(f"    {line}" for line in lines[-TAIL_LINES:])
        raise HostFailure(
            "worker-down",
            f"installing the worker runtime in {facts.runtime_dir} failed "
            f"(exit {status}); the last lines of {facts.runtime_dir}/install.log:\n{tail}",
        )
    return facts.launcher


async def upload_archive(
    session: HostSession, path: str, archive: LlamaArchive, on_line: Callable[[str], None]
) -> None:
    """The shipped runtime to `path` on the host, checked against the sha256 it was packed
    with (not one taken as it is sent)."""
    data = await asyncio.to_thread(archive.path.read_bytes)
    await upload(session, path, data, on_line, archive.sha256)


async def upload(
    session: HostSession,
    path: str,
    data: bytes,
    on_line: Callable[[str], None],
    want: str | None = None,
) -> Literal["sftp", "exec"]:
    """Put `data` at `path` on the host, checked against sha256 `want` (by default the data's
    own); return the channel it took.

    SFTP first; a host without it (or whose SFTP fails) gets the bytes on the stdin of `cat`.
    """
    want = want or hashlib.sha256(data).hexdigest()
    part = f"{path}.part"
    folder = path.rpartition("/")[0] or "/"
    verify = _verify_script(part, path, want)
    try:
        async with session.conn.start_sftp_client() as sftp:
            await sftp.makedirs(folder, exist_ok=True)
            async with sftp.open(part, "wb") as remote:
                await remote.write(data)
    except (asyncssh.Error, OSError) as exc:
        sftp_error = str(exc) or type(exc).__name__
    else:
        _check(await session.run(verify, timeout=UPLOAD_TIMEOUT), part, want)
        return "sftp"
    name = path.rpartition("/")[2]
    on_line(f"no SFTP ({sftp_error}): streaming {name} over an exec channel (cat) instead")
    quoted = shlex.quote(part)
    command = (
        f"mkdir -p {shlex.quote(folder)} && cat > {quoted} || {{ rm -f {quoted}; exit 1; }}\n"
        + verify
    )
    with command_failures(UPLOAD_TIMEOUT):
        done = await asyncio.wait_for(
            session.conn.run(command, input=data, encoding=None, check=False), UPLOAD_TIMEOUT
        )
    if done.exit_status not in (0, MISMATCH):
        raise HostFailure(
            "worker-down",
            f"cannot upload Quorum's code to {folder}: SFTP failed ({sftp_error}) and so did "
            f"`cat` on an exec channel ({_error(done)}); make sure that directory is writable "
            "and has space (or set QUORUM_CACHE_DIR on the host to a place that is)",
        )
    _check(done, part, want)
    return "exec"


def _verify_script(part: str, dest: str, want: str) -> str:
    """sh: check `part` against sha256 `want`, then rename it to `dest`, or else delete it."""
    part, dest = shlex.quote(part), shlex.quote(dest)
    return (
        f"sum=$( (sha256sum < {part} || python3 -c {shlex.quote(HASH_PY)} < {part}) 2>/dev/null)\n"
        "sum=${sum%% *}\n"
        f'if [ "$sum" != {want} ]; then rm -f {part}; echo "${{sum:-none}}"; exit {MISMATCH}; fi\n'
        f"mv -f {part} {dest} || {{ rm -f {part}; exit 1; }}\n"
    )


def _check(done: asyncssh.SSHCompletedProcess, part: str, want: str) -> None:
    """Raise HostFailure unless the verify script renamed the upload into place."""
    if done.exit_status == 0:
        return
    if done.exit_status == MISMATCH:
        got = _text(done.stdout)
        raise HostFailure(
            "worker-down",
            f"the upload of {part.rpartition('/')[2]} did not arrive intact: it had sha256 "
            f"{got[:16]}, not {want[:16]}; it was deleted and nothing was installed. Retry; "
            "if it happens again, check the host's disk in that directory (space, errors)",
        )
    raise HostFailure("worker-down", f"cannot move the uploaded {part} into place: {_error(done)}")


def _error(done: asyncssh.SSHCompletedProcess) -> str:
    return _text(done.stderr) or f"exit status {done.exit_status}"


def _text(out: object) -> str:
    """A remote command's stdout or stderr (bytes on a binary channel) as stripped text."""
    return (out.decode(errors="replace") if isinstance(out, bytes) else str(out or "")).strip()
