"""This process as a child subreaper (``PR_SET_CHILD_SUBREAPER``), for process-group trees.

Rules of this file
------------------
* A *subreaper* receives the orphans of its descendants: when a process whose
  parent has died is reparented, it goes to its nearest living ancestor marked
  subreaper instead of init. The mark is process-wide, so it brings back the
  orphans of *every* child of the process, the host's too.
* So childproc sets it only where the mode reaps every child of the process for
  as long as the context lives (``ModeRules.orphans_come_back``: LIBXL_ALWAYS),
  and only once a context there has made a process-group tree (the fallback of
  ``kill_tree=True``). There, an orphan that comes back is reaped like any child
  childproc did not make: to ``Hooks.reaped_callback``, or a warning. Elsewhere
  an orphan that came back would stay a zombie for the life of the process
  (nothing reaps a pid it did not make), so it is never set.
* A context *holds* the mark from its first process-group tree until it leaves
  that mode (``setmode``) or closes. The mark is cleared when the last holder
  lets go, and only if childproc set it: a host that was a subreaper already
  stays one. Callers hold the process lock.
* The mark is not inherited by ``fork()``; after one, the child holds nothing.
* Orphans that came back while it was set stay children of this process after
  it is cleared: whatever reaps the process's children then reaps them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["SUBREAPER", "Subreaper", "is_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - not Linux
    _prctl = None


def is_subreaper() -> bool | None:
    """Whether this process is marked subreaper (None where that cannot be read)."""
    if _prctl is None:  # pragma: no cover - not Linux
        return None
    value = ctypes.c_int(0)
    if _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(value), 0, 0, 0) != 0:
        return None  # pragma: no cover - Linux < 3.4
    return bool(value.value)


def _set(on: bool) -> bool:
    if _prctl is None:  # pragma: no cover - not Linux
        return False
    # (fails only before Linux 3.4: trees then work without it, as documented)
    return bool(_prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


class Subreaper:
    """Who holds the mark, and whether childproc set it."""

    def __init__(self) -> None:
        self._holders: set[int] = set()  # id() of the contexts that hold it
        self._ours = False  # childproc set the mark (it was not set before)
        self._pid = os.getpid()

    @property
    def held(self) -> bool:
        """Whether childproc has set the mark and some context holds it."""
        self._forget_after_fork()
        return self._ours and bool(self._holders)

    def hold(self, holder: object) -> None:
        """``holder`` needs orphans to come back (it made a process-group tree)."""
        self._forget_after_fork()
        if id(holder) in self._holders:
            return
        self._holders.add(id(holder))  # (first: an interruption before the mark leaves no stray mark)
        if not self._ours and not is_subreaper():
            self._ours = _set(True)

    def release(self, holder: object) -> None:
        """``holder`` no longer needs it (it changed mode, or closed)."""
        self._forget_after_fork()
        self._holders.discard(id(holder))
        if not self._holders and self._ours:
            _set(False)
            self._ours = False

    def release_all(self) -> None:
        """Every holder lets go (a leak check's clean-up: contexts release their own)."""
        self._holders.clear()
        self.release(None)

    def _forget_after_fork(self) -> None:
        if self._pid != os.getpid():  # (the kernel cleared the mark in the child)
            self._pid = os.getpid()
            self._holders.clear()
            self._ours = False


#: The process's one record.
SUBREAPER = Subreaper()
