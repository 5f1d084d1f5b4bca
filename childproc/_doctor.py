"""``childproc.doctor()``: what this process means for child handling, as a report.

The report is a frozen dataclass (:class:`DoctorReport`): ``str()`` for people,
:meth:`DoctorReport.as_dict` for JSON. It reads this process from the inside
(SIGCHLD's disposition through ``sigaction``, the live contexts and the children
MAINLOOP ones still wait to hear about) and from ``/proc`` (threads' signal masks,
children and zombies). Another process is read from ``/proc`` alone
(:mod:`childproc._procfs`). The report's types and the choice of traps are
:mod:`childproc._report`'s.

It changes nothing it reads. So it never calls :func:`signal.set_wakeup_fd`: Python
shows that slot only by replacing it, which resets the host's
``warn_on_full_buffer`` and loses the wake-up of a signal arriving in between; the
report says the slot was not read (:data:`~childproc._report.WAKEUP_FD_NOT_READ`).
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import sys
import threading
from typing import TYPE_CHECKING

from . import _cgroup, _process
from ._errors import InvalidArgumentError, StateError
from ._fds import OUT_OF_FDS
from ._orphans import ORPHANAGE
from ._policy import SigchldOwner, rules_for
from ._procfs import SIGCHLD_BIT, children_of, open_pidfds, process_stat, report_on, task_info
from ._report import (
    WAKEUP_FD_NOT_READ,
    ChildInfo,
    ContextInfo,
    DoctorReport,
    SigchldInfo,
    ThreadInfo,
    findings_for,
)
from ._sigchld import HANDLER, SA_NOCLDWAIT, describe, disposition
from ._subreaper import SUBREAPER, is_subreaper
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    from . import _context

__all__ = ["DoctorReport", "doctor"]


def _sigchld_here() -> SigchldInfo:
    """SIGCHLD as the kernel has it (``sigaction``), named with Python's view."""
    d = disposition()
    flags = d.flags
    nocldwait = None if flags is None else bool(flags & SA_NOCLDWAIT)
    current = d.python
    address = d.address
    kernel = None if address is None else {0: "SIG_DFL", 1: "SIG_IGN"}.get(address, f"{address:#x}")
    python = "None (set outside Python)" if current is None else describe(current)

    def info(disposition: str, handler: str | None, owner: str) -> SigchldInfo:
        return SigchldInfo(disposition, handler, nocldwait, owner, kernel, flags, python)

    # childproc's handler in use, and Python has another (signal.signal): replaced.
    instead = "the host, in place of childproc's"
    replaced = HANDLER.installed and not HANDLER.is_ours(current) and current is not None
    if address == 1 or (address is None and current == signal.SIG_IGN):
        return info("ignored", "SIG_IGN" if replaced else None, instead if replaced else "nobody")
    if address == 0 or (address is None and current == signal.SIG_DFL):
        return info("default", describe(current) if replaced else None, instead if replaced else "nobody")
    if HANDLER.is_ours(current):
        if HANDLER.replaced():
            who = "a handler installed from C" if address is not None else "another handler"
            return info("c", who, instead)
        return info("childproc", "childproc's handler", "childproc")
    if d.c_level_foreign or current is None or not callable(current):
        return info("c", describe(None), "the host (C code)")
    return info("python", describe(current), instead if replaced else "the host")


def _subreaper_here() -> str:
    """Whether this process is a child subreaper, and whose doing (see ``_subreaper``)."""
    if SUBREAPER.held:
        return "yes (childproc: orphans of process-group trees come back to a LIBXL_ALWAYS context)"
    mark = is_subreaper()
    return "unknown" if mark is None else "yes (not childproc)" if mark else "no"


def _contexts() -> tuple[ContextInfo, ...]:
    from ._context import Context  # noqa: PLC0415 - the façade imports the doctor's table, not this

    out = []
    for ctx in _process.live_contexts():
        if isinstance(ctx, Context) and not ctx.closed:
            try:
                outstanding = len(ctx.children)
            except StateError:  # called from a signal handler that interrupted childproc
                outstanding = -1
            out.append(
                ContextInfo(
                    ctx.mode.name,
                    ctx.watcher,
                    outstanding,
                    ctx.uses_sigchld_handler,
                    rules_for(ctx.mode).reaper.value,
                )
            )
    return tuple(out)


def _unreported() -> frozenset[int]:
    """The pids of MAINLOOP contexts' children whose exit nobody has reported to them
    yet (still running as far as childproc knows), fork-server children aside (their
    exits come on their exit fds, not from the host). Read under the process lock,
    so that no child is half registered; empty from a signal handler that interrupted
    childproc on this thread (its books may be mid-change)."""
    from ._context import Context  # noqa: PLC0415 - the façade imports the doctor's table, not this

    if _process.held_here():
        return frozenset()
    mainloop = [
        ctx
        for ctx in _process.live_contexts()
        if isinstance(ctx, Context) and not ctx.closed and ctx.mode is SigchldOwner.MAINLOOP
    ]
    with _process.LOCK:
        return frozenset(_unreported_locked(mainloop))


def _unreported_locked(contexts: list[_context.Context]) -> list[int]:
    """(A loop of its own, not in the ``with LOCK`` block: see ``tests/backedges.py``.)"""
    pids: list[int] = []
    for ctx in contexts:
        pids.extend(ctx._unreported_locked())
    return pids


def _children(me: int, unreported: frozenset[int]) -> tuple[ChildInfo, ...]:
    """This process's children from ``/proc``; a MAINLOOP child the listing missed
    (``/proc/<pid>/task/<tid>/children`` is missing from some kernels) is looked up
    by its pid, so that a child still here is never taken for one the host reaped."""
    found = children_of(me)
    listed = {p for p, _, _ in found}
    for p in unreported - listed:
        stat = process_stat(p)
        if stat is not None and stat[2] == me:
            found.append((p, stat[0], stat[1]))
    owned = set(_process.OWNERS)
    servers = _fork_servers()

    def watched_by(p: int) -> str:
        if p in owned or ORPHANAGE.claims(p):
            return "childproc"
        return "not childproc: a childproc fork server" if p in servers else "not childproc"

    return tuple(ChildInfo(p, state, command, watched_by(p), me) for p, state, command in sorted(found))


def _fork_servers() -> dict[int, None]:
    """The fork servers this process started (none if it never imported the module:
    the doctor does not import it)."""
    module = sys.modules.get("childproc.forkserver")
    return dict(getattr(module, "SERVERS", {}))


def _refuse_out_of_fds(me: int) -> None:
    """Raise ``OSError`` (EMFILE) if this process cannot open a file now: every fact
    the doctor reads from ``/proc`` would read as "nothing there" (no threads, no
    children, no cgroup2), which is worse than no report."""
    try:
        with open(f"/proc/{me}/status", "rb"):
            pass
    except OSError as exc:
        if exc.errno not in OUT_OF_FDS:
            raise
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        raise OSError(
            exc.errno,
            f"childproc doctor: this process is out of file descriptors (RLIMIT_NOFILE soft limit "
            f"{soft}, all in use), so /proc cannot be read and every fact would be wrong: close some, "
            "or raise the limit (resource.setrlimit, ulimit -n), and ask again; from another process, "
            f"'python -m childproc doctor --pid {me}' reads it",
        ) from None


def doctor(pid: int | None = None) -> DoctorReport:
    """A report on this process (``pid`` None, or this process's pid), read from the
    inside; or on another process ``pid``, read from ``/proc`` alone."""
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise InvalidArgumentError(
            f"pid must be a process id (a positive int) or None for this process, not {pid!r}"
        )
    if pid is not None and pid != os.getpid():
        return report_on(pid)
    me = os.getpid()
    _refuse_out_of_fds(me)
    names = {t.native_id: t.name for t in threading.enumerate()}
    threads = tuple(
        ThreadInfo(tid, names.get(tid, comm), bool(blocked & SIGCHLD_BIT), waiting)
        for tid, comm, blocked, _, _, waiting in task_info(me)
    )
    # Unreported before and after the children are read: a child started or reported
    # meanwhile is not taken for one whose exit went unreported.
    before = _unreported()
    children = _children(me, before)
    unreported = before & _unreported()
    sigchld = _sigchld_here()
    contexts = _contexts()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pidfds = _pidfd.supported()
    trees_why = _cgroup.why_not()
    reapers = tuple(
        [f"the host's SIGCHLD handler ({sigchld.handler})"] * (sigchld.disposition in ("python", "c"))
        + [
            f"a childproc {c.mode} context (waitpid(-1))"
            for c in contexts
            if c.mode in ("LIBXL", "LIBXL_ALWAYS")
        ]
        + [f"thread {t.tid} in wait()" for t in threads if t.waiting_for_children]
    )
    return DoctorReport(
        pid=me,
        source="this process",
        kernel=platform.release(),
        python=platform.python_version(),
        sigchld=sigchld,
        wakeup_fd=WAKEUP_FD_NOT_READ,
        pidfds=pidfds,
        open_pidfds=open_pidfds(me),
        kill_tree="process-group" if trees_why else "cgroup",
        subreaper=_subreaper_here(),
        rlimit_nofile=(soft, hard),
        threads=threads,
        contexts=contexts,
        children=children,
        reapers=reapers,
        findings=findings_for(
            sigchld,
            threads,
            children,
            pidfds=pidfds,
            nofile=soft,
            trees_why=trees_why,
            reapers=reapers,
            modes=tuple(c.mode for c in contexts),
            # (threads before a fork server: only while none has been started yet)
            fork_server_used="childproc.forkserver" in sys.modules and not _fork_servers(),
            unreported=unreported,
        ),
    )
