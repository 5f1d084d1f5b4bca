"""Wait statuses: decoding them for people, and building them from ``siginfo``.

Pure functions, no OS calls. A *wait status* is the integer ``os.waitpid``
returns (``WIFEXITED``/``WEXITSTATUS`` and friends decode it); ``os.waitid``
returns a ``siginfo``-like result instead, which :func:`status_from_siginfo`
turns into the same integer so every watcher hands callbacks one kind of value.
"""

from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import resource

__all__ = [
    "describe_status",
    "status_from_siginfo",
    "EventCode",
    "ChildEvent",
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


class EventCode(enum.IntEnum):
    """What happened to a child: ``siginfo_t.si_code`` for SIGCHLD."""

    EXITED = CLD_EXITED
    KILLED = CLD_KILLED
    DUMPED = CLD_DUMPED
    TRAPPED = CLD_TRAPPED
    STOPPED = CLD_STOPPED
    CONTINUED = CLD_CONTINUED


@dataclass(frozen=True)
class ChildEvent:
    """One state change of a child, as ``siginfo_t`` describes it.

    ``status`` is the exit code for :attr:`EventCode.EXITED` and the signal
    number otherwise (0 for CONTINUED). ``uid`` is the child's real user id,
    or None where the status came from ``waitpid`` or ``childproc_reaped``.
    ``rusage`` does not take part in comparisons.
    """

    pid: int
    code: EventCode
    status: int
    uid: int | None = None
    #: What the child used (``os.wait4``'s ``resource.struct_rusage``: ``ru_utime``,
    #: ``ru_stime``, ``ru_maxrss`` in KiB, ...) on the final event of a child
    #: childproc reaped, or that MAINLOOP's host reported with it; None otherwise
    #: (stops and continues, ``reap_after_callback``, a fork server's child).
    rusage: resource.struct_rusage | None = field(default=None, compare=False, repr=False)
    #: For a child with a cgroup tree (``kill_tree=True``): (user, system) CPU
    #: seconds of every process of its tree so far, when its exit was delivered.
    tree_cpu_times: tuple[float, float] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_wait_status(
        cls, pid: int, wait_status: int, uid: int | None = None, rusage: resource.struct_rusage | None = None
    ) -> ChildEvent:
        """The event a ``waitpid`` wait status describes."""
        if os.WIFEXITED(wait_status):
            return cls(pid, EventCode.EXITED, os.WEXITSTATUS(wait_status), uid, rusage)
        if os.WIFSIGNALED(wait_status):
            code = EventCode.DUMPED if os.WCOREDUMP(wait_status) else EventCode.KILLED
            return cls(pid, code, os.WTERMSIG(wait_status), uid, rusage)
        if os.WIFSTOPPED(wait_status):
            return cls(pid, EventCode.STOPPED, os.WSTOPSIG(wait_status), uid)
        if os.WIFCONTINUED(wait_status):
            return cls(pid, EventCode.CONTINUED, 0, uid)
        raise ValueError(f"not a wait status: {wait_status:#x}")

    @property
    def wait_status(self) -> int:
        """The same event as the integer ``waitpid`` would have returned."""
        return status_from_siginfo(int(self.code), self.status)

    @property
    def terminal(self) -> bool:
        """True if the child is dead (exited, killed or dumped core)."""
        return self.code in (EventCode.EXITED, EventCode.KILLED, EventCode.DUMPED)

    @property
    def returncode(self) -> int | None:
        """As ``subprocess``: the exit code, ``-signal`` if killed, None if not terminal."""
        if self.code is EventCode.EXITED:
            return self.status
        if self.code in (EventCode.KILLED, EventCode.DUMPED):
            return -self.status
        return None

    def __str__(self) -> str:
        return f"[{self.pid}] {describe_status(self.wait_status)}"
