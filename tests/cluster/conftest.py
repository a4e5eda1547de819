"""Fixtures for the cluster tests: a lab of real sshd hosts, torn down even on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum_tui.lab.sshlab import SshLab


@pytest.fixture(scope="session")
def remote_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hosts' cache dir, shared like a home directory on NFS: one runtime install."""
    return tmp_path_factory.mktemp("remote-cache")


@pytest.fixture
def lab(tmp_path: Path, remote_cache: Path) -> Iterator[SshLab]:
    lab = SshLab(tmp_path / "lab", remote_cache)
    try:
        yield lab
    finally:
        lab.close()
