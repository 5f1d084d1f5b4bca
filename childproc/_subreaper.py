"""This process as a child subreaper (``PR_SET_CHILD_SUBREAPER``), for process-group trees.

Rules of this file
------------------
* A *subreaper* receives the orphans of its descendants: when a process whose
  parent has died is reparented, it goes to its nearest living ancestor marked
  subreaper instead of init. The mark is process-wide, so it brings back the
  orphans of *every* child of the process, the host's too.
* So childproc sets it only where the mode reaps every child of the process for
  as long as the context lives (``ModeRules.orphans_come_back``: LIBXL_ALWAYS),
  and only once a context there has made a process-group tree
  (``kill_tree="process-group"``, or ``kill_tree=True`` where there are no
  cgroups). There, every orphan that comes back is reaped: one still in a
  tracked tree's group (below) as that tree's (the route's ``RETURNED``: to
  nobody), any other like a child childproc did not make (to
  ``Hooks.reaped_callback``, or a warning). Elsewhere
  an orphan that came back would stay a zombie for the life of the process
  (nothing reaps a pid it did not make), so it is never set.
* A context *holds* the mark from its first process-group tree until it leaves
  that mode (``setmode``) or closes. The mark is cleared when the last holder
  lets go, and only if childproc set it: a host that was a subreaper already
  stays one. :meth:`Subreaper.hold` and :meth:`Subreaper.release` are called
  with the process lock held.
* The groups of the process-group trees made while orphans come back are
  tracked (:meth:`Subreaper.track`) until each is seen empty: a group's number
  cannot be reused while it has a member, a zombie included. A zombie child
  seen in a tracked group (other than its leader) is that tree's: routed as
  ``Owner.RETURNED``, and reaped after a tree is killed, at a leader's delivery
  and when a context closes (:mod:`childproc._trees`). So is a child of the
  host's that joined a tree's group: the kernel cannot tell the two apart.
* The mark is not inherited by ``fork()`` (after one, the child holds nothing),
  but it survives ``execve()``: a program that re-execs itself keeps it.
* Orphans that came back while it was set stay children of this process after
  it is cleared: whatever reaps the process's children then reaps them.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from ._weakbag import WeakBag

__all__ = ["SUBREAPER", "Subreaper", "is_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    # prctl is variadic: only the first parameter is fixed, the others go as c_ulong
    # (ctypes then makes a variadic call, as the ABI wants).
    _prctl.argtypes = [ctypes.c_int]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None

log = logging.getLogger("childproc")


def _call(option: int, arg: int) -> int:
    return int(_prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def is_subreaper() -> bool | None:
    """Whether this process is marked subreaper (None where that cannot be read)."""
    if _prctl is None:  # pragma: no cover - not Linux
        return None
    value = ctypes.c_int(0)
    if _call(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(value)) != 0:
        return None  # pragma: no cover - Linux < 3.4, or a seccomp filter
    return bool(value.value)


def _set(on: bool) -> bool:
    """Set or clear the mark; False where the kernel refuses (trees then work without
    it, as they do in the other modes)."""
    if _prctl is None:  # pragma: no cover - not Linux
        return False
    if _call(_PR_SET_CHILD_SUBREAPER, int(on)) == 0:
        return True
    log.debug("prctl(PR_SET_CHILD_SUBREAPER, %d) failed: errno %d", on, ctypes.get_errno())
    return False


class Subreaper:
    """Who holds the mark, whether childproc set it, and the groups it brings back."""

    def __init__(self) -> None:
        self._holders: WeakBag[object] = WeakBag()  # contexts that hold it
        self._ours = False  # childproc set the mark (it was not set before)
        self._marked = False  # the mark was there (whoever's) when last held
        self._pid = os.getpid()
        #: The process groups of the process-group trees made while orphans come
        #: back, each until it is seen empty (see :meth:`groups`).
        self._groups: set[int] = set()

    @property
    def held(self) -> bool:
        """Whether childproc has set the mark and some context holds it (read without
        the lock: a snapshot)."""
        if not (self._ours and self._holders):  # (the common case: no getpid())
            return False
        self._forget_after_fork()
        return self._ours and bool(self._holders)

    @property
    def brings_back(self) -> bool:
        """Whether some context holds the mark and the process is a subreaper (by
        childproc's mark or a host's): orphans of trees come back here."""
        if not (self._marked and self._holders):  # (the common case: no getpid())
            return False
        self._forget_after_fork()
        return self._marked and bool(self._holders)

    def hold(self, holder: object) -> None:
        """``holder`` needs orphans to come back (it made a process-group tree). Each
        step can be interrupted and the next call mends it: the kernel is asked each
        time, and ``_ours`` is set before the mark, so release() clears a mark set
        just before an interruption."""
        self._forget_after_fork()
        self._holders.add(holder)
        if not is_subreaper():
            self._ours = True
            if not _set(True):
                self._ours = False
        self._marked = is_subreaper() is True

    def release(self, holder: object) -> None:
        """``holder`` no longer needs it (it changed mode, or closed)."""
        self._forget_after_fork()
        self._holders.discard(holder)
        if self._holders:
            return
        self._marked = False
        self._groups.clear()
        if self._ours:
            _set(False)
            self._ours = False

    def track(self, pgid: int) -> None:
        """A process-group tree led by ``pgid`` was made while orphans come back."""
        self._groups.add(pgid)

    def groups(self) -> list[int]:
        """The tracked groups, each still its tree's. A group's number cannot be
        reused while a member exists (a zombie too), so a group stays tracked until
        it is seen empty (``killpg(pgid, 0)``: no such process): each call checks.
        Called with the process lock held."""
        if not self._groups:  # (the common case: no system call)
            return []
        self._forget_after_fork()
        for pgid in list(self._groups):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                self._groups.discard(pgid)
            except PermissionError:
                pass  # a member runs as another user: the group exists
        return list(self._groups)

    def release_all(self) -> None:
        """Every holder lets go (a leak check's clean-up: contexts release their own)."""
        self._holders.clear()
        self.release(self)

    def _forget_after_fork(self) -> None:
        if self._pid != os.getpid():  # (the kernel cleared the mark in the child)
            self._pid = os.getpid()
            self._holders.clear()
            self._ours = self._marked = False
            self._groups.clear()


#: The process's one record.
SUBREAPER = Subreaper()
