"""A copy of the installed llama.cpp build made of symbolic links, for tests that change what
Quorum derives from a build (CPU verdicts, refusals) or that leave files out of it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from quorum_tui.engine.llamabuild import LlamaBuild


def build_copy(folder: Path, leave_out: Iterable[str] = ()) -> Path:
    """`folder`, laid out as site-packages is (llama_cpp/lib, lib, bin), each file a link to
    the installed build's, minus the files named in `leave_out`. Point QUORUM_LLAMA_BUILD at
    it."""
    real = LlamaBuild.installed()
    skip = set(leave_out)
    (folder / "llama_cpp").mkdir(parents=True)
    (folder / "llama_cpp" / "lib").symlink_to(real.lib_dir)
    (folder / "lib").symlink_to((real.root / "lib").resolve())
    (folder / "bin").mkdir()
    for path in real.bin_dir.iterdir():
        if path.name not in skip:
            (folder / "bin" / path.name).symlink_to(path)
    return folder
