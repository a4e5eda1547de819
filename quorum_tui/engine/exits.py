"""How a llama.cpp process ended, in words: a signal's likely cause and what to do about it.

A process that dies by a signal leaves only a number behind (a negative return code, or 128 +
the signal in a shell's `$?`); the user needs the cause. This module names it, standard library
only (the worker hosts use it too).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

OOM_HINT = (
    "most often the kernel's out-of-memory killer: check with `journalctl -k | grep -i oom` "
    "(or `dmesg | grep -i oom`), then put fewer layers or a smaller context on that machine"
)
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE)


def signal_of(code: int | None) -> int | None:
    """The signal a return code says killed the process (Popen's negative codes)."""
    if code is None or code >= 0:
        return None
    return -code


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(
    who: str,
    code: int | None,
    log: Path | str | None = None,
    tail: Sequence[str] = (),
    sigill_action: str = "",
) -> str:
    """`who` (for example "the coordinator") ended with return code `code`, in one message.

    `tail` holds the last lines of its log at `log`; `sigill_action` says what Quorum did
    about an instruction the CPU refused.
    """
    where = f" (log: {log})" if log else ""
    signum = signal_of(code)
    if signum is None:
        last = f": {tail[-1].strip()}" if tail else ""
        return f"{who} exited with status {code}{last}{where}"
    name = signal_name(signum)
    if signum == signal.SIGILL:
        text = (
            f"{who} died of SIGILL: this CPU (or the virtual machine it runs in) refused an "
            "instruction of llama.cpp's CPU kernels, although it claims to support it"
        )
        return f"{text}; {sigill_action}{where}" if sigill_action else text + where
    if signum == signal.SIGKILL:
        return f"{who} was killed by SIGKILL: {OOM_HINT}{where}"
    if signum in CRASH_SIGNALS:
        lines = "".join(f"\n    {line.rstrip()}" for line in tail)
        shown = f"; the last lines of {log}:{lines}" if lines else where
        return f"llama.cpp crashed: {who} died of {name}{shown}"
    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        return f"{who} was stopped by {name}{where}"
    return f"{who} died of {name}{where}"


def shell_status_code(status: int) -> int:
    """A shell's `$?` as a Popen-style return code: 128 + N means signal N."""
    return -(status - 128) if 128 < status < 128 + 65 else status
