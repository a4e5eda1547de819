"""Helpers for the engine tests: run the real `quorum` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

QuorumRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def quorum() -> QuorumRunner:
    """`quorum("run", ...)`: the CLI in a subprocess, with the test's isolated dirs."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quorum_tui", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
        )

    return run
