"""`quorum demo` in a real terminal (tmux): it opens serving the real model, ready to chat."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


class Tmux:
    """One detached tmux session of 120x40 running a command."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = f"quorum-test-{uuid.uuid4().hex[:8]}"
        exports = [f"{k}={v}" for k, v in env.items()]
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40",
             "env", *exports, *command],
            check=True,
        )  # fmt: skip

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, timeout: float = 90) -> str:
        """The screen, its lines joined by single spaces (text may wrap), once it matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = " ".join(self.screen().split())
            if re.search(pattern, text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.screen()}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0  # fmt: skip

    def pid(self) -> int:
        out = subprocess.run(["tmux", "list-panes", "-t", self.name, "-F", "#{pane_pid}"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return int(out.stdout.split()[0])

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def demo(quorum_dirs: dict[str, Path]) -> Iterator[Tmux]:
    env = {f"QUORUM_{k.upper()}_DIR": str(v) for k, v in quorum_dirs.items()}
    env |= {"HF_HUB_OFFLINE": "1", "TERM": "xterm-256color", "PATH": os.environ["PATH"]}
    session = Tmux([sys.executable, "-m", "quorum_tui", "demo"], env)
    try:
        yield session
    finally:
        session.kill()


def test_demo_in_tmux_opens_ready_to_chat_and_answers(demo: Tmux) -> None:
    app = psutil.Process(demo.pid())
    screen = demo.wait_for(r"SmolLM2-135M-Instruct\.Q4_1\.gguf at http://127\.0\.0\.1:\d+/v1", 180)
    assert "coordinator -, w1 0-14" in screen and "w2 15-29+out" in screen
    assert "Fits on this machine alone" in screen
    workers = [p for p in app.children(recursive=True) if "worker" in " ".join(p.cmdline())]
    assert len(workers) == 2
    demo.keys("-l", "What is the capital of France?")
    demo.keys("Enter")
    screen = demo.wait_for(r"SmolLM2-135M-Instruct\.Q4_1\.gguf · [\d.]+ tokens/s", timeout=120)
    assert "Paris" in screen, screen
    demo.keys("F2")
    screen = demo.wait_for(r"ready: serving")
    assert "SmolLM2-135M-Instruct.Q4_1: 30 layers" in screen and "15-29+out" in screen
    demo.keys("C-q")
    deadline = time.monotonic() + 30
    while demo.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not demo.alive(), demo.screen()
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
