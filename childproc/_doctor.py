"""``childproc.doctor()``: what this process means for child handling, as a report.

The report is a frozen dataclass (:class:`DoctorReport`): ``str()`` for people,
:meth:`DoctorReport.as_dict` for JSON. It reads this process from the inside
(SIGCHLD's disposition through ``sigaction``, the wake-up fd slot, the live
contexts) and from ``/proc`` (threads' signal masks, children and zombies).
Another process is read from ``/proc`` alone (:mod:`childproc._procfs`). The
report's types and the choice of traps are :mod:`childproc._report`'s.
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import sys
import threading

from . import _cgroup, _process
from ._errors import InvalidArgumentError, StateError
from ._orphans import ORPHANAGE
from ._policy import rules_for
from ._procfs import SIGCHLD_BIT, children_of, open_pidfds, report_on, task_info
from ._report import ChildInfo, ContextInfo, DoctorReport, SigchldInfo, ThreadInfo, findings_for
from ._sigchld import HANDLER, SA_NOCLDWAIT, describe, disposition, on_main_thread
from ._subreaper import SUBREAPER, is_subreaper
from ._watchers import pidfd as _pidfd

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

    if address == 1 or (address is None and current == signal.SIG_IGN):
        return info("ignored", None, "nobody")
    if address == 0 or (address is None and current == signal.SIG_DFL):
        return info("default", None, "nobody")
    if HANDLER.is_ours(current):
        if HANDLER.replaced():
            who = "a handler installed from C" if address is not None else "another handler"
            return info("c", who, "the host, in place of childproc's")
        return info("childproc", "childproc's handler", "childproc")
    if d.c_level_foreign or current is None or not callable(current):
        return info("c", describe(None), "the host (C code)")
    return info("python", describe(current), "the host")


def _wakeup_fd() -> str | None:
    if not on_main_thread():
        return None  # (only the main thread may read it)
    fd = signal.set_wakeup_fd(-1)  # the only way to read the slot is to swap it; put it straight back
    if fd != -1:
        signal.set_wakeup_fd(fd)  # (warn_on_full_buffer: Python's default, and asyncio's)
        return f"fd {fd} (the host's, e.g. asyncio's; childproc never takes it)"
    return "none"


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
    names = {t.native_id: t.name for t in threading.enumerate()}
    threads = tuple(
        ThreadInfo(tid, names.get(tid, comm), bool(blocked & SIGCHLD_BIT), waiting)
        for tid, comm, blocked, _, _, waiting in task_info(me)
    )
    owned = set(_process.OWNERS)
    children = tuple(
        ChildInfo(
            p, state, command, "childproc" if p in owned or ORPHANAGE.claims(p) else "not childproc", me
        )
        for p, state, command in children_of(me)
    )
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
        wakeup_fd=_wakeup_fd(),
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
            fork_server_used="childproc.forkserver" in sys.modules,
        ),
    )
