"""The doctor's report as data: what :func:`childproc.doctor` returns, and which traps apply.

Pure: no OS calls. :mod:`childproc._doctor` fills it in for this process,
:mod:`childproc._procfs` for another, from ``/proc``; the traps' words are
:mod:`childproc._traps`' own, the same the errors are made of.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._traps import TRAPS, ignored_why

__all__ = [
    "WAKEUP_FD_NOT_READ",
    "ChildInfo",
    "ContextInfo",
    "DoctorReport",
    "Finding",
    "SigchldInfo",
    "ThreadInfo",
    "findings_for",
]

#: :attr:`DoctorReport.wakeup_fd` for this process: why the slot is not shown.
WAKEUP_FD_NOT_READ = (
    "not read (Python shows the slot only by replacing it, which would reset the host's "
    "warn_on_full_buffer and could lose a signal's wake-up; childproc never takes it)"
)


@dataclass(frozen=True)
class SigchldInfo:
    """SIGCHLD's disposition and who holds it."""

    #: "default", "ignored", "childproc", "python" (a Python handler), "c" (one
    #: installed from C), or, for another process, "caught" (a handler, whose
    #: cannot be read from /proc).
    disposition: str
    #: The handler, described, where there is one.
    handler: str | None
    #: ``SA_NOCLDWAIT`` is set (the kernel reaps children); None where it cannot be read.
    nocldwait: bool | None
    #: "nobody", "childproc", "the host", "the host (C code)" or "unknown".
    owner: str
    #: What the kernel has (``sigaction``): "SIG_DFL", "SIG_IGN" or the handler's
    #: address; None where it cannot be read (another process).
    kernel_handler: str | None = None
    #: ``sa_flags`` as the kernel has them; None where they cannot be read.
    sa_flags: int | None = None
    #: What Python's :func:`signal.getsignal` says (this process only).
    python_handler: str | None = None


@dataclass(frozen=True)
class ThreadInfo:
    """A thread of the process, as far as child handling cares."""

    tid: int
    name: str
    #: SIGCHLD is in the thread's signal mask.
    sigchld_blocked: bool
    #: The thread is blocked in a ``wait()``/``waitpid()``/``waitid()`` right now that
    #: may reap any child, not one it names by pid or pidfd (None: its ``wchan`` may
    #: not be read).
    waiting_for_children: bool | None


@dataclass(frozen=True)
class ContextInfo:
    """A live childproc context of this process."""

    mode: str
    watcher: str
    outstanding_children: int
    uses_sigchld_handler: bool
    reaper: str


#: A child's ``watched_by`` from ``/proc`` when the process holds a pidfd for it:
#: something there watches it, and may reap it (its zombie is no trap yet).
HELD_BY_A_PIDFD = "unknown: the process holds a pidfd for it"


@dataclass(frozen=True)
class ChildInfo:
    """A child of the process."""

    pid: int
    #: The state letter of ``/proc/<pid>/stat`` ("R", "S", "Z" for a zombie, ...).
    state: str
    command: str
    #: "childproc" (a context, or its orphanage, reaps it), "not childproc" (with
    #: ": a childproc fork server" for one this process started), or "unknown"
    #: (another process's report).
    watched_by: str
    #: Its parent: the process the report is about.
    parent: int = 0


@dataclass(frozen=True)
class Finding:
    """A trap that applies, with what to do (the text of :mod:`childproc._traps`)."""

    trap: str
    message: str


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`childproc.doctor` found. ``str()`` for people; :meth:`as_dict` for JSON."""

    pid: int
    #: "this process" (read from the inside), or "/proc" (another process).
    source: str
    kernel: str
    #: Python's version, for this process (None for another).
    python: str | None
    sigchld: SigchldInfo
    #: :func:`signal.set_wakeup_fd`'s slot, which the doctor does not read: Python shows
    #: it only by replacing it, which would reset the host's ``warn_on_full_buffer`` and
    #: lose the wake-up of a signal arriving meanwhile. For this process the text says
    #: so (:data:`WAKEUP_FD_NOT_READ`); None for another process.
    wakeup_fd: str | None
    #: The kernel has working pidfds (for this process: childproc can use them).
    pidfds: bool
    #: Open pidfds in the process (something watches processes through them); None
    #: where its fds may not be read.
    open_pidfds: int | None
    #: What ``kill_tree=True`` gives here: "cgroup" or "process-group" (this process only).
    kill_tree: str | None
    rlimit_nofile: tuple[int, int] | None
    threads: tuple[ThreadInfo, ...]
    #: Live childproc contexts (None for another process: not readable from outside).
    contexts: tuple[ContextInfo, ...] | None
    children: tuple[ChildInfo, ...]
    #: What in the process may reap children by any pid (a SIGCHLD handler, a thread
    #: in ``wait()``, a LIBXL or LIBXL_ALWAYS context); empty: nothing does.
    reapers: tuple[str, ...]
    findings: tuple[Finding, ...]
    #: Whether this process is a child subreaper, and whose doing: "no", "yes (childproc: ...)"
    #: or "yes (not childproc)"; None for another process (not readable from outside).
    subreaper: str | None = None

    @property
    def zombies(self) -> tuple[int, ...]:
        """The children that have exited and are not reaped yet."""
        return tuple(c.pid for c in self.children if c.state == "Z")

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``doctor --json`` prints)."""
        data = dataclasses.asdict(self)
        data["zombies"] = list(self.zombies)
        return data

    def __str__(self) -> str:
        s = self.sigchld
        handler = f" ({s.handler})" if s.handler else ""
        unknown = "; SA_NOCLDWAIT not shown in /proc"
        nocld_text = {True: ", SA_NOCLDWAIT", False: "", None: unknown}[s.nocldwait]
        lines = [
            f"childproc doctor for pid {self.pid}, read from {self.source} (Linux {self.kernel}"
            + (f", Python {self.python})" if self.python else ")"),
            f"  SIGCHLD             : {s.disposition}{handler}{nocld_text}; held by {s.owner}",
            f"  wake-up fd          : {self.wakeup_fd if self.wakeup_fd is not None else 'unknown'}",
            f"  pidfds              : {'yes' if self.pidfds else 'NO'} "
            f"({'?' if self.open_pidfds is None else self.open_pidfds} open)",
        ]
        if self.kill_tree is not None:
            lines.append(f"  kill_tree=True      : {self.kill_tree}")
        if self.subreaper is not None:
            lines.append(f"  subreaper           : {self.subreaper}")
        if self.rlimit_nofile is not None:
            lines.append(
                f"  RLIMIT_NOFILE       : soft {self.rlimit_nofile[0]}, hard {self.rlimit_nofile[1]}"
            )
        waiting = [t.tid for t in self.threads if t.waiting_for_children]
        blocking = [t.tid for t in self.threads if t.sigchld_blocked]
        lines.append(
            f"  threads             : {len(self.threads)}"
            + (f"; in a wait() for any child: {', '.join(map(str, waiting))}" if waiting else "")
            + (f"; SIGCHLD blocked in: {', '.join(map(str, blocking))}" if blocking else "")
        )
        if self.contexts is None:
            lines.append("  childproc contexts  : unknown (another process)")
        else:
            lines.append(f"  childproc contexts  : {len(self.contexts)}")
            lines.extend(
                f"    - {c.mode}: watcher {c.watcher}, {c.outstanding_children} outstanding, "
                f"{'uses' if c.uses_sigchld_handler else 'does not use'} the SIGCHLD handler, "
                f"reaper {c.reaper}"
                for c in self.contexts
            )
        lines.append(f"  children            : {len(self.children)} ({len(self.zombies)} zombie(s))")
        lines.extend(f"    - {c.pid} {c.state} {c.command} ({c.watched_by})" for c in self.children[:20])
        if len(self.children) > 20:
            lines.append(f"    - ... and {len(self.children) - 20} more")
        lines.append(f"  may reap any child  : {', '.join(self.reapers) if self.reapers else 'nothing'}")
        if self.findings:
            lines.append("traps:")
            lines.extend(f"  ! [{f.trap}] {f.message}" for f in self.findings)
        else:
            lines.append("no traps")
        return "\n".join(lines)


def findings_for(
    sigchld: SigchldInfo,
    threads: tuple[ThreadInfo, ...],
    children: tuple[ChildInfo, ...],
    *,
    pidfds: bool,
    nofile: int | None,
    trees_why: str | None,
    reapers: tuple[str, ...],
    modes: tuple[str, ...] | None,
    fork_server_used: bool = False,
    unreported: frozenset[int] = frozenset(),
) -> tuple[Finding, ...]:
    """The traps that apply to these facts. ``modes``: the live contexts' modes in
    this process (None: another process, where childproc's own traps do not apply);
    ``fork_server_used``: the program imported :mod:`childproc.forkserver` and started no
    server yet (only then do threads already running matter); ``unreported``: the pids
    of children made by
    MAINLOOP contexts whose exit no one has reported to them (still running as far
    as childproc knows; fork-server children aside, whose exits come on their exit fd):
    each is a zombie among ``children``, alive, or not a child any more (reaped)."""
    out: list[Finding] = []
    inside = modes is not None
    only_mainloop = bool(modes) and all(m == "MAINLOOP" for m in modes or ())

    def add(key: str, **facts: object) -> None:
        out.append(Finding(key, TRAPS[key].finding(**facts)))

    ignored = sigchld.disposition == "ignored" or bool(sigchld.nocldwait)
    if ignored:
        add(
            "sigchld-ignored",
            why=ignored_why("SIG_IGN" if sigchld.disposition == "ignored" else "SA_NOCLDWAIT"),
        )
    if sigchld.owner.startswith("the host, in place of childproc"):
        add("handler-replaced", handler=sigchld.handler or "a handler")
    elif sigchld.disposition in ("python", "c") and not ignored and inside and not only_mainloop:
        # (A host's handler is what MAINLOOP expects: the host reaps and reports.)
        add("foreign-handler", handler=sigchld.handler or "a handler")
    if not pidfds:
        add("no-pidfds")
    # (No matter to contexts that all watch pidfds: PIDFD, SELECTIVE_REAP with pidfds.)
    pidfds_only = inside and bool(modes) and pidfds and not {"LIBXL", "LIBXL_ALWAYS"} & set(modes or ())
    if threads and all(t.sigchld_blocked for t in threads) and not pidfds_only:
        add("sigchld-blocked")
    foreign = [c for c in children if c.watched_by != "childproc"]
    if foreign and modes and {"LIBXL", "LIBXL_ALWAYS"} & set(modes):
        add("foreign-children", pids=", ".join(str(c.pid) for c in foreign[:10]))
    reaping = [m for m in modes or () if m != "MAINLOOP"]  # (in MAINLOOP the host reaps: expected)
    waiting = [str(t.tid) for t in threads if t.waiting_for_children]
    if waiting and reaping:
        add("reaper-thread", tids=", ".join(waiting), modes=" or ".join(sorted(set(reaping))))
    zombies = [c.pid for c in foreign if c.state == "Z" and c.watched_by != HELD_BY_A_PIDFD]
    if zombies and not reapers:
        add("unreaped-zombies", pids=", ".join(map(str, zombies[:10])) + ", ..." * (len(zombies) > 10))
    if unreported:
        dead = sorted(c.pid for c in children if c.pid in unreported and c.state == "Z")
        reaped = sorted(unreported - {c.pid for c in children})
        which = [
            f"{label}: {', '.join(map(str, pids[:10]))}{', ...' * (len(pids) > 10)}"
            for label, pids in (
                ("zombies nobody reaped", dead),
                ("reaped by someone, never reported", reaped),
            )
            if pids
        ]
        if which:
            add("unreported-exits", which="; ".join(which))
    others = [t.name for t in threads[1:]]
    if others and inside and fork_server_used:
        add("threads-before-fork-server", count=len(others), names=", ".join(others[:5]))
    if nofile is not None and nofile < 4096 and inside:
        add("low-nofile", soft=nofile)
    if trees_why is not None:
        add("no-cgroup-trees", why=trees_why)
    return tuple(out)
