"""The worker runtime on a host: a venv with llama-cpp-python built with RPC, plus this package.

Layout under the remote cache dir (`$QUORUM_CACHE_DIR`, else `$XDG_CACHE_HOME/quorum`, else
`~/.cache/quorum`): `runtime-<version>/venv` (python3 -m venv), `app/quorum_tui` (this
package's code, uploaded as a tarball), `runtime.json` (written last: protocol, llama version,
RPC verified, code hash) and `install.log`. Installs on a shared home directory are serialised
with a file lock.

The tarball goes over SFTP or, where sshd has no SFTP subsystem, down the stdin of `cat` on an
exec channel. Either way it lands as `NAME.part`, the host checks its sha256 (`sha256sum`, else
python3) and only then renames it into place; a mismatch deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
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

LLAMA_VERSION = "0.3.36"
EXTRA_PACKAGES = ("platformdirs",)
TAIL_LINES = 15
UPLOAD_TIMEOUT = 300.0
MISMATCH = 3
HASH_PY = "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"

INSTALL_SCRIPT = r"""
import fcntl, json, os, subprocess, sys, tarfile
rt, tarball, app_hash, cuda, llama, protocol, extras = sys.argv[1:8]
os.makedirs(rt, exist_ok=True)
log = open(os.path.join(rt, "install.log"), "a")
def say(text):
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()
def run(cmd, env=None):
    say("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})))
    for line in proc.stdout:
        say(line.rstrip())
    if proc.wait():
        say("failed with exit status %d" % proc.returncode)
        sys.exit(1)
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
py = os.path.join(rt, "venv", "bin", "python")
if not (meta.get("protocol") == protocol and meta.get("rpc") and os.path.exists(py)):
    meta = {}
    if os.path.exists(meta_path):
        os.remove(meta_path)
    run([sys.executable, "-m", "venv", "--clear", os.path.join(rt, "venv")])
    cmake = "-DGGML_RPC=on" + (" -DGGML_CUDA=on" if cuda == "1" else "")
    env = {"CMAKE_ARGS": cmake, "PIP_PROGRESS_BAR": "off"}
    run([py, "-m", "pip", "install", "llama-cpp-python==" + llama] + extras.split(), env)
    check = "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_rpc() else 3)"
    if subprocess.run([py, "-c", check]).returncode:
        say("the installed llama-cpp-python has no RPC (a cached wheel?): rebuilding")
        run([py, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "--no-deps",
             "llama-cpp-python==" + llama], env)
        if subprocess.run([py, "-c", check]).returncode:
            say("llama-cpp-python still lacks RPC support")
            sys.exit(1)
    meta = {"protocol": protocol, "llama_cpp": llama, "rpc": True, "cuda": cuda == "1"}
if meta.get("app") != app_hash:
    say("unpacking Quorum's code (%s)" % app_hash[:12])
    app = os.path.join(rt, "app")
    subprocess.run(["rm", "-rf", app])
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(app, filter="data")
        else:
            tar.extractall(app)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    open(os.path.join(site, "quorum-app.pth"), "w").write(app + "\n")
    meta["app"] = app_hash
json.dump(meta, open(meta_path + ".tmp", "w"))
os.replace(meta_path + ".tmp", meta_path)
os.remove(tarball)
del lock
say("runtime ready: %s" % rt)
"""


@cache
def app_tarball() -> tuple[bytes, str]:
    """This package's code (no caches) as a tar.gz, and its content hash."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".tcss", ".typed"}
    )
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in files:
            rel = Path("quorum_tui") / path.relative_to(root)
            data = path.read_bytes()
            digest.update(str(rel).encode() + b"\0" + data)
            info = tarfile.TarInfo(str(rel))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()


def runtime_current(facts: HostFacts) -> bool:
    return facts.runtime_ok and (facts.runtime or {}).get("app") == app_tarball()[1]


async def ensure_runtime(
    session: HostSession, facts: HostFacts, on_line: Callable[[str], None]
) -> str:
    """Install or update the runtime if needed; return the runtime's python."""
    if runtime_current(facts):
        return facts.runtime_python
    if facts.python is None or facts.python_path is None:
        raise HostFailure("worker-down", "the host has no python3 to build a worker runtime with")
    data, digest = app_tarball()
    tarball = f"{facts.runtime_dir}/upload-{digest[:12]}-{secrets.token_hex(4)}.tar.gz"
    await upload(session, tarball, data, on_line)
    args = [
        facts.runtime_dir,
        tarball,
        digest,
        "1" if facts.gpus else "0",
        LLAMA_VERSION,
        PROTOCOL_TEXT,
        " ".join(EXTRA_PACKAGES),
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
    return facts.runtime_python


async def upload(
    session: HostSession, path: str, data: bytes, on_line: Callable[[str], None]
) -> Literal["sftp", "exec"]:
    """Put `data` at `path` on the host, checked by sha256; return the channel it took.

    SFTP first; a host without it (or whose SFTP fails) gets the bytes on the stdin of `cat`.
    """
    want = hashlib.sha256(data).hexdigest()
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
            f"the upload of Quorum's code did not arrive intact: {part} had sha256 "
            f"{got[:16]}, not {want[:16]}; it was deleted and nothing was installed. Retry; "
            "if it happens again, check the host's disk in that directory (space, errors)",
        )
    raise HostFailure("worker-down", f"cannot move the uploaded {part} into place: {_error(done)}")


def _error(done: asyncssh.SSHCompletedProcess) -> str:
    return _text(done.stderr) or f"exit status {done.exit_status}"


def _text(out: object) -> str:
    """A remote command's stdout or stderr (bytes on a binary channel) as stripped text."""
    return (out.decode(errors="replace") if isinstance(out, bytes) else str(out or "")).strip()
