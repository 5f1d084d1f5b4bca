"""What a test needs to see about this process: fds, children, zombies, SIGCHLD."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Iterable, Iterator


def open_fds() -> set[int]:
    """This process's open fds (without the one listdir itself uses)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the directory fd listdir just closed
        fds.add(fd)
    return fds


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command (0: state, 1: ppid, 2: pgid,
    3: sid). Raises ``FileNotFoundError`` if there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return stat_fields(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, T, Z, ...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def proc_states(pids: Iterable[int]) -> dict[int, str | None]:
    """:func:`proc_state` of each of ``pids``."""
    return {pid: proc_state(pid) for pid in pids}


def children() -> dict[int, str]:
    """pid -> state letter for every child of this process (zombies included)."""
    me = os.getpid()
    out: dict[int, str] = {}
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        tasks = [str(me)]
    for tid in tasks:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            state = proc_state(pid)
            if state is not None:
                out[pid] = state
    return out


def zombies() -> list[int]:
    return [pid for pid, state in children().items() if state == "Z"]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def is_zombie(pid: int) -> bool:
    return proc_state(pid) == "Z"


def sigchld_disposition() -> object:
    return signal.getsignal(signal.SIGCHLD)


@contextlib.contextmanager
def fd_room(extra: int) -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that only about ``extra`` more fds can be opened.

    The limit bounds fd *numbers*, so the free numbers below the highest open
    fd are filled first (with /dev/null), or the new fds would land there.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []
    while (fd := os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)) < top:
        fillers.append(fd)
    fillers.append(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd + 1 + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for f in fillers:
            os.close(f)
