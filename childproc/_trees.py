"""A child's tree: what ``kill_tree=True`` gives a child, and what reaches all of it.

Rules of this file
------------------
* A child spawned or forked with ``kill_tree=True`` gets a tree of its own, of
  one of two kinds, chosen once per process (:func:`make`):

  ========================  =================================================
  ``"cgroup"``              a cgroup of its own (:mod:`childproc._cgroup`),
                            where this process may make cgroups: every
                            descendant, whatever it does, is reached;
                            ``cgroup.kill`` kills them all at once; the tree
                            can be frozen; its CPU time is known.
  ``"process-group"``       elsewhere: the child leads a new process group
                            (``setpgid``, or the session ``start_new_session``
                            makes). A descendant that calls ``setsid()`` or
                            ``setpgid()`` leaves the group and is not reached;
                            nor is one still running once the leader has been
                            reaped (the group's number may then be anyone's).
  ========================  =================================================

* A group is signalled only while its leader is unreaped (alive, or a zombie
  childproc has not reaped yet): a group id cannot be reused while its leader's
  zombie exists, and childproc is the one that reaps it. That check and the
  signal are one step under the process lock (``Children.signal_group``).
  Where the application reaps (MAINLOOP), no group is signalled at all.
* A tree outlives its child for as long as processes remain in it; its cgroup
  is removed once empty (:func:`settle`, and the home's sweeps).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Generator, Iterator
from typing import NamedTuple, Protocol

from . import _cgroup, _process
from ._errors import InvalidArgumentError, StateError
from ._orphans import ORPHANAGE
from ._status import describe_status
from ._subreaper import SUBREAPER

__all__ = [
    "NO_TREE",
    "GroupTree",
    "Tree",
    "TreePlan",
    "plan",
    "log_returned",
    "reap_all_returned",
    "reap_returned",
    "settle",
    "settle_steps",
    "tree_guarantee",
]

log = logging.getLogger("childproc")

#: How long a killed tree's last processes may take to leave it before its cgroup
#: is left for a later sweep (they are SIGKILLed: milliseconds).
SETTLE_S = 2.0
#: How long a killed process-group tree is waited for once nothing more of it comes
#: back and dies (members left are then no child of ours: a zombie whose parent
#: does not reap it, a descendant still running).
GRACE_S = 0.2
#: How often a settling tree is looked at.
_STEP_S = 0.005


class Tree(Protocol):
    """What a child's tree offers (both kinds)."""

    guarantee: str

    def signal(self, sig: int) -> None: ...
    def freeze(self, timeout: float = ...) -> bool: ...
    def thaw(self) -> None: ...
    def cpu_times(self) -> tuple[float, float]: ...
    def wait_empty(self, timeout: float) -> bool: ...


class GroupTree:
    """A tree that is the child's own process group (the fallback)."""

    guarantee = "process-group"

    def __init__(self, signal_group: Callable[[int], None], leader: Callable[[], int]) -> None:
        self._signal_group = signal_group
        self._leader = leader

    @property
    def pgid(self) -> int:
        """The group's id: its leader's pid."""
        return self._leader()

    def signal(self, sig: int) -> None:
        self._signal_group(sig)

    def freeze(self, timeout: float = 5.0) -> bool:
        raise StateError(
            "freeze() needs a cgroup tree, and this child's tree is its process group (this "
            "process may not make cgroups here); send SIGSTOP with kill_tree(signal.SIGSTOP) instead"
        )

    def thaw(self) -> None:
        raise StateError(
            "thaw() needs a cgroup tree, and this child's tree is its process group (this process "
            "may not make cgroups here); send SIGCONT with kill_tree(signal.SIGCONT) instead"
        )

    def wait_empty(self, timeout: float) -> bool:
        return True  # (a group cannot be watched: what is left in it is not waited for)

    def cpu_times(self) -> tuple[float, float]:
        raise StateError(
            "a tree's CPU time needs a cgroup tree, and this child's tree is its process group "
            "(this process may not make cgroups here); the child's own is in its final event"
        )


class TreePlan(NamedTuple):
    """What ``spawn``/``fork`` were asked for: a session, a group, a tree."""

    setsid: bool
    setpgroup: int | None  # 0: a new group led by the child
    kill_tree: bool
    cgroup: _cgroup.CgroupTree | None  # the child's cgroup, made before it starts

    @property
    def leads_group(self) -> bool:
        return self.setsid or self.setpgroup == 0

    def tree_for(self, signal_group: Callable[[int], None], leader: Callable[[], int]) -> Tree | None:
        """The tree the child gets (None without ``kill_tree``); ``leader()`` is the
        child's pid once it has one."""
        if not self.kill_tree:
            return None
        return self.cgroup if self.cgroup is not None else GroupTree(signal_group, leader)

    def in_forked_child(self) -> None:
        """A forked child's own half, before ``fork()`` returns there: into its
        cgroup first (before it can fork), then its session or group. A child that
        cannot do what was asked (or is interrupted doing it) exits (127) rather
        than run outside its tree."""
        try:
            if self.cgroup is not None:
                fd = os.open(self.cgroup.procs, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            if self.setsid:
                os.setsid()
            elif self.setpgroup is not None:
                os.setpgid(0, self.setpgroup)
        except BaseException as exc:  # (a KeyboardInterrupt too: it must not run outside its tree)
            why = f"childproc: the forked child could not enter its session, group or tree: {exc!r}\n"
            os.write(2, why.encode())
            os._exit(127)

    def in_parent(self, pid: int, forked: bool, by_pid: bool) -> None:
        """The parent's half, before ``spawn``/``fork`` return, with the process lock
        held and the child unreaped (so ``pid`` is still the child's): the tree is
        claimed, and, where the pid may be used (``by_pid``: not where the
        application reaps), the child is put into its cgroup (so that a tree killed
        at once is not empty) and, forked, into its group (whichever of the two
        runs first does it; the other's may fail)."""
        if self.cgroup is not None:
            home = _cgroup.home()
            if home is not None:
                home.claim(self.cgroup)
        if not by_pid:
            return
        if forked and self.setpgroup is not None:
            try:
                os.setpgid(pid, self.setpgroup)
            except OSError:
                pass  # it did so itself and exec'd, or exited
        if self.cgroup is not None:
            try:
                self.cgroup.add(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass  # a zombie already (having moved itself in), or the tree swept after a stall


#: Nothing asked: no session, no group, no tree.
NO_TREE = TreePlan(False, None, False, None)


def plan(start_new_session: object, process_group: object, kill_tree: object) -> TreePlan:
    """``spawn``/``fork``'s session, group and tree options checked (as ``subprocess``
    takes the first two), and the cgroup made where the child gets one."""
    if process_group is not None and (
        not isinstance(process_group, int) or isinstance(process_group, bool) or process_group < 0
    ):
        raise InvalidArgumentError(
            f"process_group must be a process group id (int >= 0; 0: a new group led by the "
            f"child), not {process_group!r}"
        )
    if start_new_session and process_group is not None:
        raise InvalidArgumentError(
            "give start_new_session or process_group, not both (a session leader cannot change group)"
        )
    if not start_new_session and process_group is None and not kill_tree:
        return NO_TREE
    setsid = bool(start_new_session)
    if kill_tree not in (False, True, "cgroup", "process-group"):
        raise InvalidArgumentError(
            f'kill_tree must be True (the best tree here), "cgroup", "process-group" or False, '
            f"not {kill_tree!r}"
        )
    if not kill_tree:
        return TreePlan(setsid, process_group, False, None)
    home = _cgroup.home() if kill_tree != "process-group" else None
    if home is not None:
        try:
            return TreePlan(setsid, process_group, True, home.new_tree())
        except OSError as exc:
            raise StateError(f"could not make a cgroup for the child's tree in {home.dir}: {exc}") from exc
    if kill_tree == "cgroup":
        raise StateError(
            'kill_tree="cgroup", but this process may not make cgroups here (it needs a cgroup2 '
            "hierarchy where it may create cgroups and move processes: root, or a delegated "
            "subtree; and Linux 5.14+ for cgroup.kill). kill_tree=True falls back to a process group"
        )
    if process_group not in (None, 0):
        why = (
            "asked for" if kill_tree == "process-group" else "the fallback: this process may not make cgroups"
        )
        raise InvalidArgumentError(
            f"the child's tree is its own process group here ({why}), so it cannot join group "
            f"{process_group}: leave process_group out"
        )
    return TreePlan(setsid, None if setsid else 0, True, None)


def tree_guarantee() -> str:
    """What ``kill_tree=True`` gives a child in this process: ``"cgroup"`` (every
    descendant is reached, whatever it does) where this process may make cgroups
    (cgroup v2, root or a delegated subtree, Linux 5.14+), else
    ``"process-group"`` (the descendants still in the child's group, while the
    child is unreaped). The first call makes this process's cgroup home (see
    :mod:`childproc._cgroup`)."""
    return "cgroup" if _cgroup.home() is not None else "process-group"


def settle(tree: object, kill: bool) -> None:
    """The tree's child is gone: with ``kill``, SIGKILL what is left and wait (a
    little) for it to leave; remove the cgroup if empty, else leave it for a sweep.
    A process-group tree whose members come back here (a tracked group: see
    :mod:`childproc._subreaper`) has those that died reaped (:func:`reap_returned`;
    killed: waiting a little for the rest). Blocks: an event loop drives
    :func:`settle_steps` instead."""
    _block(settle_steps(tree, kill))


def settle_steps(tree: object, kill: bool) -> Generator[float, None, None]:
    """:func:`settle` as steps that never block: each look is done at once, and what
    is yielded is how long to wait before the next one (a loop awaits its own
    sleep). Closed before its end (the waiting cancelled), the cgroup is still
    removed if empty, else left for a sweep."""
    if isinstance(tree, GroupTree):
        if SUBREAPER.brings_back:
            yield from _returned_steps(tree.pgid, SETTLE_S if kill else 0.0)
        return
    if not isinstance(tree, _cgroup.CgroupTree) or tree.removed:
        return
    try:
        if kill:
            tree.signal(signal.SIGKILL)
            deadline = time.monotonic() + SETTLE_S
            while True:
                if tree.wait_empty(0) or time.monotonic() >= deadline:
                    break
                yield _STEP_S
    finally:
        home = _cgroup.home()
        if home is not None:
            home.retire(tree)
        else:  # pragma: no cover - a tree exists only where there is a home
            tree.remove()


def reap_all_returned(timeout: float) -> None:
    """A context closes: reap what came back of every tracked group, as
    :func:`reap_returned` does for one (a tree killed just before the close has
    members still dying: they are waited for, a little)."""
    _block(_returned_steps(None, timeout))


def reap_returned(pgid: int, timeout: float) -> None:
    """Reap, without a callback, the zombies among this process's children in the
    tracked group ``pgid`` (a process-group tree's members that came back: see
    :mod:`childproc._subreaper`), never its leader nor a pid a childproc context or
    the orphanage watches. With ``timeout`` (never under the process lock), go on
    until the group is empty, or nothing of it came back and died for
    :data:`GRACE_S` (what is left is no child of ours), or ``timeout`` passed."""
    _block(_returned_steps(pgid, timeout))


def _block(steps: Iterator[float]) -> None:
    """Run ``steps`` (see :func:`settle_steps`) here, sleeping between them."""
    for pause in steps:
        time.sleep(pause)


def _returned_steps(pgid: int | None, timeout: float) -> Generator[float, None, None]:
    """:func:`reap_returned` for ``pgid``, or for every tracked group (None), as
    steps (see :func:`settle_steps`)."""
    assert timeout == 0 or not _process.held_here(), "reaping what came back would sleep under the lock"
    start = last = time.monotonic()
    while True:
        with _process.LOCK:  # (no reaper of childproc's between the look and the reap)
            tracked = SUBREAPER.groups()
            groups = tracked if pgid is None else [pgid] if pgid in tracked else []
            if not groups:
                return  # nothing tracked (any more): empty, or never a tracked tree's
            if any([_reap_members(g) for g in groups]):
                last = time.monotonic()
        now = time.monotonic()
        if timeout <= 0 or now - start >= timeout or now - last >= GRACE_S:
            return
        yield _STEP_S


def log_returned(pid: int, status: int) -> None:
    """Say (at debug level) that ``pid``, an orphan of a tree that came back, was reaped."""
    log.debug("reaped [%d] %s: an orphan of a process-group tree", pid, describe_status(status))


def _reap_members(pgid: int) -> bool:
    """One pass of :func:`reap_returned` (the process lock held); whether it reaped."""
    reaped = False
    for pid in _process.foreign_children():  # (this process's children no context owns)
        if pid == pgid or ORPHANAGE.claims(pid):
            continue
        try:
            if os.getpgid(pid) != pgid:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
        except (ProcessLookupError, ChildProcessError):
            continue  # gone meanwhile
        if done:
            reaped = True
            log_returned(pid, status)
    return reaped
