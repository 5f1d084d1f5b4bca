"""Letting children go: a released handle, and a context's close.

What becomes of each child when its context closes (:func:`teardown_locked`):

* ``kill_on_close``: SIGKILLed (through its pidfd; by pid only where only
  childproc reaps it), then waited for and reaped (:func:`reap_killed`);
* exited already: reaped now, its callback dropped;
* still running: handed with its pidfd to the orphanage
  (:mod:`childproc._orphans`), which reaps it when it exits; the caller warns
  (:func:`orphan_warning`). In MAINLOOP the application reaps: the child is
  only forgotten.

Each step is safe to run again after an interruption: the context's teardown
is finished by the next childproc call (``_process.run_chores``) or by
``close()`` again.
"""

from __future__ import annotations

import logging
import os
import signal

from . import _process
from ._cgroup import CgroupTree
from ._child import Child
from ._children import Children
from ._errors import ChildprocError
from ._forkserver_wire import EXIT_EVENT
from ._lifecycle import Move, Phase, advance
from ._orphans import ORPHANAGE
from ._policy import Reaper
from ._sigchld import HANDLER
from ._trees import settle
from ._watchers._base import found_from_waitid, reap_zombie
from ._watchers.scan import scan

__all__ = [
    "kill_locked",
    "orphan_warning",
    "reap_doomed_if_dead",
    "reap_killed",
    "release",
    "teardown_locked",
]

log = logging.getLogger("childproc")


def kill_locked(kids: Children, child: Child) -> bool:
    """SIGKILL an owned child, and its tree if it has one; False where the child
    cannot be killed safely. LOCK held."""
    _kill_tree_locked(kids, child)
    try:
        if child._pidfd is not None:
            signal.pidfd_send_signal(child._pidfd, signal.SIGKILL)
        elif kids.plan.rules.reaper is Reaper.APPLICATION or child._exit_fd is not None:
            log.warning(
                "not killing child %d on close: there is no pidfd for it and in MAINLOOP the "
                "application reaps, so its pid may already name another process",
                child._pid,
            )
            return False
        else:
            os.kill(child._pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _kill_tree_locked(kids: Children, child: Child) -> None:
    tree = child._tree
    if isinstance(tree, CgroupTree):
        tree.kill()
    elif tree is not None:
        try:
            kids.signal_group(child, signal.SIGKILL)
        except ChildprocError as exc:
            log.warning("not killing child %d's process group: %s", child._pid, exc)


def reap_killed(kids: Children, children: list[Child], closed: bool) -> None:
    """Wait for SIGKILLed children (in ``kids.doomed``) to die and reap them (outside
    the lock). Interrupted, the rest stay in ``kids.doomed`` for the next call."""
    for child in children:
        try:
            if child._exit_fd is not None:
                os.set_blocking(child._exit_fd, True)
                data = os.read(child._exit_fd, EXIT_EVENT.size)  # the server reaps it
                if len(data) == EXIT_EVENT.size and child._status is None:
                    child._status = EXIT_EVENT.unpack(data)[1]
            else:
                if child._pidfd is not None:
                    info = os.waitid(os.P_PIDFD, child._pidfd, os.WEXITED)
                else:
                    info = os.waitid(os.P_PID, child._pid, os.WEXITED)
                if info is not None and child._status is None:
                    child._status = found_from_waitid(info)[1]
        except (ChildProcessError, OSError):
            pass  # someone else reaped it meanwhile
        settle(child._tree, kill=True)  # what is left of its tree, then its cgroup
        finished_killing(kids, child, closed)


def finished_killing(kids: Children, child: Child, closed: bool) -> None:
    with _process.LOCK:
        child.phase = advance(child.phase, Move.RELEASE)
        kids.gone_locked(child)
        if child in kids.doomed:
            kids.doomed.remove(child)
        if not closed:
            kids.sync_handler_use_locked()


def reap_doomed_if_dead(kids: Children) -> None:
    """Reap, without blocking, killed children an interruption left in ``kids.doomed``."""
    for child in list(kids.doomed):
        try:
            if child._pidfd is not None:
                info = os.waitid(os.P_PIDFD, child._pidfd, os.WEXITED | os.WNOHANG)
            elif child._exit_fd is None:
                info = os.waitid(os.P_PID, child._pid, os.WEXITED | os.WNOHANG)
            else:
                continue  # a fork server's: its exit record comes; close() reads it
        except (ChildProcessError, OSError):
            info = None
        else:
            if info is None:
                continue  # not dead yet
        finished_killing(kids, child, closed=False)


def release(kids: Children, child: Child, closed: bool) -> None:
    """``Child.release()``: no more callbacks; kill and reap it with ``kill_on_close``,
    else leave it to the application (it is no longer childproc's to reap). Its
    pipes are closed either way."""
    try:
        _release(kids, child, closed)
    finally:
        if child._io is not None:
            child._io.close()


def _release(kids: Children, child: Child, closed: bool) -> None:
    kill = False
    with _process.LOCK:
        if child.released or child.phase in (Phase.DELIVERED, Phase.REAP_DUE):
            if child.phase is Phase.REAP_DUE:
                kids.reap_zombie(child)
            return
        if child.phase is Phase.EXIT_SEEN:
            reap_zombie(child)  # its exit was seen
            child.phase = advance(child.phase, Move.RELEASE)
            kids.gone_locked(child)
            kids.sync_handler_use_locked()
        elif kids.ledger.handle(child._pid) is child:
            kill = child.kill_on_close and kill_locked(kids, child)
            if kill and child not in kids.doomed:
                kids.doomed.append(child)  # (reaped by the next call if interrupted)
            kids.ledger.forget(child._pid)
            if not kill:
                kids.gone_locked(child)
                kids.sync_handler_use_locked()
        elif child.phase in (Phase.EXITED, Phase.LOST):
            child.phase = advance(child.phase, Move.RELEASE)  # its queued event is skipped
    if kill:
        reap_killed(kids, [child], closed)
    kids.close_gone_fds()


def teardown_locked(kids: Children, orphans: list[int]) -> None:
    """Kill, reap or hand over every child; drop the queue; leave the handler. LOCK held."""
    ledger = kids.ledger
    journal = kids.reaping.journal
    app_reaps = kids.plan.rules.reaper is Reaper.APPLICATION
    for child in ledger.running_handles():
        pid = child._pid
        child._defer_reap = False  # closing: reap now, no callback will run
        for poke in child._exit_wakers:  # a communicate() on another thread: it raises ClosedError
            poke()
        if child._pidfd is not None and not kids.wakeups.pidfd_is_ours(pid):
            # Handed to the orphanage already by an interrupted teardown, which then
            # reaped it and closed the fd (or someone else closed it): by pid from here.
            kids.wakeups.disown_pidfd(pid)
            child._pidfd = None
        if child.kill_on_close and kill_locked(kids, child):
            if child not in kids.doomed:
                kids.doomed.append(child)
            ledger.forget(pid, Move.RELEASE)
            continue
        if not app_reaps and child._exit_fd is None:
            scan([child], journal)  # exited already? reaped into the journal
            exited = bool(journal.own or journal.exited or journal.peeked)
            journal.own.clear()
            journal.exited.clear()
            journal.peeked.clear()
            journal.gone.clear()
            journal.fd_lost.clear()
            if exited:
                ledger.forget(pid, Move.RELEASE)
                kids.gone_locked(child)
                continue
        if child._exit_fd is None:
            orphans.append(pid)
            if not app_reaps:
                ORPHANAGE.take(pid, kids.wakeups.pidfd_of(pid))  # the orphanage's now: then forget it
                kids.wakeups.disown_pidfd(pid)
                child._pidfd = None
        ledger.forget(pid, Move.ABANDON)
        kids.gone_locked(child)
    for child in list(kids.reaping.zombies.values()):
        reap_zombie(child)
        child.phase = advance(child.phase, Move.ABANDON)
        kids.gone_locked(child)
    ledger.discard_queue()
    HANDLER.set_user(kids.handler_key, kids.wakeups.waker.poke, False)  # never raises


def orphan_warning(orphans: list[int], app_reaps: bool) -> str:
    return (
        f"childproc.Context closed while child(ren) {', '.join(map(str, orphans))} still ran: "
        + (
            "the application reaps them (MAINLOOP)"
            if app_reaps
            else "childproc reaps them when they exit, without their callbacks"
        )
        + ". Wait for children before closing (child.wait(), ctx.wait()), or spawn them with "
        "kill_on_close=True to have close() kill them."
    )
