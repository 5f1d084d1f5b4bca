"""What exists once per process: the lock, who made each pid, the live contexts, fork hygiene.

Rules of this file
------------------
* :data:`LOCK` guards every table here, the SIGCHLD handler's bookkeeping
  (:mod:`childproc._sigchld`) *and* every context's ledger, so a pid cannot be
  reaped between ``fork()`` and its registration. It is never held while user
  code runs, except ``fork_replacement`` (which must not call back into
  childproc). Every public entry point calls :func:`refuse_reentry` before it
  takes the lock, so a call from a signal handler that interrupted childproc,
  or from ``fork_replacement``, raises instead of deadlocking or working on
  half-changed tables.
* :data:`OWNERS` says whose each watched pid is: a weak reference to the
  children of the context that watches it (:class:`childproc._children.Children`),
  so that a context its owner forgot can be collected (and warn). The children
  of closed contexts are the orphanage's (:mod:`childproc._orphans`), not in
  this table.
* :func:`run_chores` carries out work that could not be done where it arose:
  a handler change wanted on a worker thread, a context's teardown that an
  exception interrupted. Every entry point of a context calls it when
  :data:`CHORES` is set; it is cheap when idle.
* After ``fork()`` the child starts clean: the handler is put back, every
  inherited context is disabled and its fds closed, the tables are emptied.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from . import _stdio
from ._errors import StateError
from ._sigchld import HANDLER, on_main_thread
from ._weakbag import WeakBag

__all__ = [
    "LOCK",
    "OWNERS",
    "Owner",
    "foreign_children",
    "postfork_child_noexec",
    "refuse_reentry",
    "register_context",
    "run_chores",
    "snapshot",
]


class Owner(Protocol):
    """What :data:`OWNERS` maps a pid to: whoever must hear of its death."""

    def accept_reaped(self, pid: int, status: int, uid: int | None, rusage: object = None) -> None:
        """Another context reaped ``pid`` (``waitpid(-1)``). LOCK held."""

    def accept_gone(self, pid: int) -> None:
        """``pid`` was found reaped by someone else. LOCK held."""


class Teardown(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    def _finish_teardown(self, *, wait: bool = True) -> None:
        """Finish a teardown an exception interrupted. LOCK not held. ``wait=False``:
        pass if another thread is at it."""

    def _abandon_after_fork(self) -> None:
        """In a forked child: disable, close fds."""

    def _tear_down_forgotten(self) -> None:
        """Freed while open: warn, close (on a thread of its own)."""

    def _leave_at_exit(self) -> None:
        """The interpreter is exiting: do nothing when freed."""

    def _delivering_here(self) -> bool:
        """This thread is delivering this context's events (maybe in a callback)."""


log = logging.getLogger("childproc")

#: Guards the tables below, the handler's bookkeeping and every context's ledger.
#: A C-level re-entrant lock, so that ``with LOCK`` runs no Python code and the
#: thread holding it can be asked for. :func:`refuse_reentry` at every entry point
#: keeps user code from taking it twice; inside childproc one part that takes it
#: may be called by another that holds it (reaping what came back of a tree after
#: a delivery), which never waits while it holds it.
LOCK = threading.RLock()
held_here: Callable[[], bool] = LOCK._is_owned  # type: ignore[attr-defined]


def reentry_error() -> StateError:
    return StateError(
        "childproc was re-entered while busy on this thread: do not call it from a "
        "signal handler (report from your main loop, e.g. through a self-pipe) or "
        "from fork_replacement"
    )


def refuse_reentry() -> None:
    """Raise :class:`StateError` if this thread already holds :data:`LOCK`."""
    if held_here():
        raise reentry_error()


#: pid -> a weak reference to the Children of the context that watches it; every watched pid.
OWNERS: dict[int, Callable[[], Owner | None]] = {}

_contexts: WeakBag[Teardown] = WeakBag()
#: Contexts whose teardown an exception (a KeyboardInterrupt) interrupted (a dict: its
#: store, and CHORES' after it, are no calls, between which an interrupt may land).
_unfinished: dict[Teardown, None] = {}
#: Truthy when :func:`run_chores` has work (read on every entry point).
CHORES: list[bool] = []
_state_pid = os.getpid()


def owner_of(pid: int) -> Owner | None:
    ref = OWNERS.get(pid)
    return ref() if ref is not None else None


def register_context(ctx: Teardown) -> None:
    with LOCK:  # (a WeakBag is not thread-safe by itself)
        _contexts.add(ctx)


def live_contexts() -> list[Teardown]:
    with LOCK:
        return _contexts.members()


def delivering_here() -> bool:
    """This thread is delivering some context's events: it may be in a callback,
    holding that context's delivery, which its dispatch thread (or a thread waiting
    for a child) may be waiting for. Such a thread must not wait for other threads
    at a close: they may be waiting for it."""
    return any(ctx._delivering_here() for ctx in live_contexts())


def teardown_started(ctx: Teardown) -> None:
    """``ctx`` begins a teardown: until :func:`teardown_done`, chores finish it."""
    _unfinished[ctx] = None
    CHORES[:] = [True]


def teardown_done(ctx: Teardown) -> None:
    _unfinished.pop(ctx, None)


def want_chores() -> None:
    CHORES[:] = [True]


def run_chores() -> None:
    """Finish interrupted teardowns and carry out a handler change a worker thread
    could not. Never raises for a handler conflict (the users hear of it)."""
    if held_here():
        return  # (from a signal handler or gc inside childproc: later)
    CHORES.clear()
    for ctx in list(_unfinished):
        try:
            ctx._finish_teardown(wait=False)
        except Exception:  # a bug: say so once, but never poison every later call
            _unfinished.pop(ctx, None)
            log.exception("childproc could not finish closing a context")
    if HANDLER.pending:
        with LOCK:
            HANDLER.sync(may_raise=False)
        if HANDLER.pending and not on_main_thread():
            CHORES[:] = [True]


def tear_down_forgotten(ctx: Teardown) -> None:
    """Close ``ctx``, which was freed while open: run on a thread of its own, started
    by the context's finalizer (C code only: see ``Context.__del__``). SIGCHLD's
    handler, if that was its last user, is put back by the main thread: it is asked
    to at once (:meth:`~childproc._sigchld.SigchldHandler.restore_soon`)."""
    try:
        ctx._tear_down_forgotten()
    except Exception:  # (a bug: said, not raised into a thread nobody joins)
        log.exception("childproc could not close a context freed while open")
    HANDLER.restore_soon()


_exiting: list[bool] = []


def exiting() -> bool:
    """Whether the interpreter is exiting (this module's ``atexit`` hook has run)."""
    return bool(_exiting)


def _at_exit() -> None:
    """Before the interpreter finalizes: contexts freed from now on start no thread
    (one started then would never run)."""
    _exiting.append(True)
    for ctx in live_contexts():
        ctx._leave_at_exit()


def _restore_from_handler() -> None:
    """Run by childproc's SIGCHLD handler on the main thread when its last user left
    on another thread: put the prior disposition back, unless this thread is inside
    childproc (then its next call does)."""
    if held_here():
        return
    # Not waiting for the lock: the thread holding it may wait for one this thread
    # holds where the handler interrupted it (threading's, a logging handler's).
    # Then the next SIGCHLD, or this thread's next childproc call, restores.
    taken: list[bool] = []
    try:
        taken.extend(map(LOCK.acquire, (False,)))  # (lands from C: no interruption between)
        if taken[0]:
            HANDLER.sync(may_raise=False)
        else:
            want_chores()
    finally:
        if taken and taken[0]:
            LOCK.release()


HANDLER.restore_hook = _restore_from_handler


atexit.register(_at_exit)


def foreign_children() -> list[int]:
    """Children of this process that no childproc context made. LOCK held.

    One ``waitid`` when there are no children at all (the common case); only
    otherwise are the ``/proc/self/task/*/children`` lists read.
    """
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover - no /proc: cannot tell
        return []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return sorted(p for p in set(pids) if p not in OWNERS)


def snapshot() -> dict[str, object]:
    """The process-wide state, for diagnostics and tests."""
    return {
        "handler_installed": HANDLER.installed,
        "saved_disposition": HANDLER.saved,
        "pending_main_thread_change": HANDLER.pending,
        "handler_users": HANDLER.user_count,
        "owned_pids": len(OWNERS),
        "live_contexts": len(_contexts),
    }


def postfork_child_noexec() -> None:
    """Make a forked child clean: handler restored, inherited contexts disabled.

    Runs automatically after ``os.fork()`` (``os.register_at_fork``). Call it
    yourself after a fork childproc could not see (a C extension's ``fork()``)
    if the child goes on running Python without ``exec``. Idempotent.
    """
    global _state_pid
    if _state_pid == os.getpid():
        return
    _state_pid = os.getpid()
    if not held_here():
        # Another thread of the parent held it at fork time: that thread does not
        # exist here, so nobody would ever release it. (Held here: the fork ran
        # under it, as child_fork's does, and the forking thread releases it.)
        LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    HANDLER.reset_after_fork()
    _stdio.abandon_after_fork()
    for ctx in list(_contexts):
        ctx._abandon_after_fork()
    _contexts.clear()
    _unfinished.clear()
    CHORES.clear()
    OWNERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=postfork_child_noexec)
