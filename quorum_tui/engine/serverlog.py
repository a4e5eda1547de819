"""llama-server's output into its log file, debug lines dropped once the model is loaded.

The coordinator runs at debug verbosity because that is the only level at which llama.cpp
says where each layer went; while serving, the same level writes about 2 KB per token. A
thread copies the output into the log and, once `quiet` is set, drops debug messages (lines
that carry the `D` level mark; unmarked lines, such as an abort's, are always kept).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

DEBUG_LINE = re.compile(rb"^[\d.]+ D ")


class LogPump(threading.Thread):
    """Copies lines from a pipe's read end into `path` until the writer closes it."""

    def __init__(self, fd: int, path: Path) -> None:
        super().__init__(name=f"log {path.name}", daemon=True)
        self.fd = fd
        self.path = path
        self.quiet = False

    def run(self) -> None:
        with os.fdopen(self.fd, "rb") as source, self.path.open("ab", buffering=0) as log:
            for line in source:
                if self.quiet and DEBUG_LINE.match(line):
                    continue
                log.write(line)
