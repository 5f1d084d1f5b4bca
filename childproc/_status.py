"""Wait statuses: decoding them for people, and building them from ``siginfo``.

Pure functions, no OS calls. A *wait status* is the integer ``os.waitpid``
returns (``WIFEXITED``/``WEXITSTATUS`` and friends decode it); ``os.waitid``
returns a ``siginfo``-like result instead, which :func:`status_from_siginfo`
turns into the same integer so every watcher hands callbacks one kind of value.
"""

from __future__ import annotations

import os
import signal

__all__ = [
    "describe_status",
    "status_from_siginfo",
    "CLD_EXITED",
    "CLD_KILLED",
    "CLD_DUMPED",
    "CLD_STOPPED",
    "CLD_CONTINUED",
    "CLD_TRAPPED",
]

# si_code values for SIGCHLD (Linux and POSIX agree on these numbers).
CLD_EXITED = getattr(os, "CLD_EXITED", 1)
CLD_KILLED = getattr(os, "CLD_KILLED", 2)
CLD_DUMPED = getattr(os, "CLD_DUMPED", 3)
CLD_TRAPPED = getattr(os, "CLD_TRAPPED", 4)
CLD_STOPPED = getattr(os, "CLD_STOPPED", 5)
CLD_CONTINUED = getattr(os, "CLD_CONTINUED", 6)


def _signame(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def describe_status(status: int) -> str:
    """A wait status in words: ``"exited with status 3"``, ``"killed by SIGKILL"``."""
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {_signame(os.WTERMSIG(status))}{core}"
    if os.WIFSTOPPED(status):
        return f"stopped by {_signame(os.WSTOPSIG(status))}"
    if os.WIFCONTINUED(status):
        return "continued"
    return f"unrecognised wait status {status:#x}"


def status_from_siginfo(code: int, si_status: int) -> int:
    """The wait status that ``waitpid`` would have returned for a ``waitid`` result.

    ``code`` is ``si_code`` (``CLD_*``); ``si_status`` is the exit code or the
    signal number, as ``waitid`` gives them.
    """
    if code == CLD_EXITED:
        return (si_status & 0xFF) << 8
    if code == CLD_KILLED:
        return si_status & 0x7F
    if code == CLD_DUMPED:
        return (si_status & 0x7F) | 0x80
    if code in (CLD_STOPPED, CLD_TRAPPED):
        return ((si_status & 0xFF) << 8) | 0x7F
    if code == CLD_CONTINUED:
        return 0xFFFF
    raise ValueError(f"not a SIGCHLD si_code: {code}")
