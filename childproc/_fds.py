"""File-descriptor hygiene for every fd childproc opens: never at 0-2, never closing a stranger's.

A host may close fd 0, 1 or 2 and ``dup2`` it back at any moment (CPython's own
``test_subprocess`` does). An fd childproc opened in that window would land on
the freed number and be silently replaced by the host's ``dup2``. So:

* :func:`above_stdio` moves a fresh fd that landed on 0-2 above them
  (``F_DUPFD_CLOEXEC``, 3) and closes the low number;
* :class:`FdIdentity` remembers what an fd was when childproc opened it
  (device, inode, type), and :func:`close_if_ours` closes an fd only if it is
  still that object. A pidfd has an inode of its own on Linux >= 6.9 (pidfs);
  on older kernels every pidfd shares one inode, and the check falls back to
  "still a pidfd for the same pid" through ``/proc/self/fdinfo``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

__all__ = [
    "CLOSED",
    "OTHER",
    "OURS",
    "OUT_OF_FDS",
    "FdIdentity",
    "above_stdio",
    "close_if_ours",
    "fd_state",
    "identify",
    "pid_of_pidfd",
    "still_ours",
]

#: An open that failed with one of these says nothing about what was opened: this
#: process (or the system) is out of fds, now. No answer may be kept from it.
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})

FdIdentity = tuple[int, int, int, int]  # (st_dev, st_ino, file type, pid of a pidfd or 0)


def above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec duplicate above 2 if it landed on 0-2 (then the
    low one is closed). Use on every fd childproc opens, right after opening it."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def pid_of_pidfd(fd: int) -> int | None:
    """The pid a pidfd refers to (``Pid:`` in /proc/self/fdinfo; -1 once reaped),
    or None if ``fd`` is not a pidfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            pid = next((line.split()[1] for line in f if line.startswith("Pid:")), None)
            return None if pid is None else int(pid)
    except (OSError, ValueError):
        pass
    return None


_pidfs: bool | None = None


def _pidfds_have_own_inodes() -> bool:
    """Linux >= 6.9 (pidfs) gives each process's pidfds an inode of their own."""
    global _pidfs
    if _pidfs is None:
        try:
            a = os.pidfd_open(os.getpid())
        except (OSError, AttributeError):
            _pidfs = False
            return False
        try:
            b = os.pidfd_open(os.getppid()) if os.getppid() > 0 else a
            try:
                _pidfs = b != a and os.fstat(a).st_ino != os.fstat(b).st_ino
            finally:
                if b != a:
                    os.close(b)
        except OSError:
            _pidfs = False
        finally:
            os.close(a)
    return _pidfs


def identify(fd: int, pid: int = 0) -> FdIdentity:
    """What ``fd`` is now; ``pid``: for a pidfd, its process (checked through
    fdinfo where pidfds share one inode)."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), 0 if not pid or _pidfds_have_own_inodes() else pid)


OURS, CLOSED, OTHER = "ours", "closed", "other"


def fd_state(fd: int, identity: FdIdentity) -> str:
    """Whether ``fd`` is still the object :func:`identify` saw (:data:`OURS`), is
    not open (:data:`CLOSED`), or now names something else (:data:`OTHER`)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return CLOSED
    if (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) != identity[:3]:
        return OTHER
    pid = identity[3]
    if pid:
        # pidfds share one inode before Linux 6.9: ask which process it is for.
        # (A reaped child's pidfd says -1.)
        now = pid_of_pidfd(fd)
        if now is None or now not in (pid, -1):
            return OTHER
    return OURS


def still_ours(fd: int, identity: FdIdentity) -> bool:
    """Whether ``fd`` is still the object :func:`identify` saw."""
    return fd_state(fd, identity) == OURS


def close_if_ours(fd: int, identity: FdIdentity | None) -> str:
    """Close ``fd`` if it is still what was opened (always, without an identity).
    Returns what it found: :data:`OURS` (closed now), :data:`CLOSED` (closed
    already: by an earlier, interrupted call of ours, or by someone else) or
    :data:`OTHER` (someone closed it and the number names another object now:
    left alone). Safe to call again after an interruption."""
    state = OURS if identity is None else fd_state(fd, identity)
    if state != OURS:
        return state
    try:
        os.close(fd)
    except OSError:
        return CLOSED
    return OURS
