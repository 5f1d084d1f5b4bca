"""The traps of child handling, once: what the doctor warns about and what the errors say.

Rules of this file
------------------
* Pure: no OS calls, no imports from the rest of childproc. Each trap is a
  :class:`Trap`: what the situation is, what it does to each mode or feature,
  and what to do. The exceptions childproc raises for a trap build their
  message from its entry (:meth:`Trap.error`), and the doctor lists the same
  entry (:meth:`Trap.finding`), so the two cannot disagree.
* Text is written for the person who reads the error: it says what happened,
  what it means here, and the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TRAPS", "Trap", "ignored_why"]


@dataclass(frozen=True)
class Trap:
    """One trap: ``situation`` (a format string over the facts), what it means for
    each mode or feature it touches (``effects``), and ``remedy``."""

    key: str
    situation: str
    effects: str
    remedy: str

    def error(self, effect: str, **facts: object) -> str:
        """An exception's message: the situation, what it means for the call that
        failed (``effect``, over the same facts), the remedy."""
        return (
            f"{self.situation.format(**facts)}, and {effect.format(**facts)}. {self.remedy.format(**facts)}"
        )

    def finding(self, **facts: object) -> str:
        """The doctor's line: the situation, every effect, the remedy."""
        return (
            f"{self.situation.format(**facts)}: {self.effects.format(**facts)}. {self.remedy.format(**facts)}"
        )


_LIST = [
    Trap(
        "sigchld-ignored",
        "SIGCHLD is {why} in the process, so the kernel discards every child's exit status",
        "SELECTIVE_REAP, PIDFD and MAINLOOP refuse to start children (SigchldIgnoredError); LIBXL "
        "works only from the main thread (its handler replaces the disposition while it has "
        "children); LIBXL_ALWAYS replaces it while it runs; asyncio's subprocesses get no exit status "
        "(returncode 255, 'unknown child process')",
        "Either restore the default (signal.signal(signal.SIGCHLD, signal.SIG_DFL)) while childproc "
        "has children, or use SigchldOwner.LIBXL_ALWAYS, which replaces the disposition while it runs "
        "(on the main thread) and reaps the host's children for it (see Hooks.reaped_callback)",
    ),
    Trap(
        "foreign-handler",
        "SIGCHLD already has a handler: {handler}",
        "LIBXL and LIBXL_ALWAYS refuse to start (SigchldConflictError): childproc will not replace "
        "it; SELECTIVE_REAP and PIDFD work beside it (with pidfds)",
        "If the host reaps children itself, use SigchldOwner.MAINLOOP and report each reaped pid with "
        "ctx.childproc_reaped(pid, status) (or call ctx.sigchld_occurred()); otherwise remove that "
        "handler before using childproc",
    ),
    Trap(
        "no-pidfds",
        "this system has no pidfds (Linux >= 5.3, not blocked by seccomp)",
        "SELECTIVE_REAP falls back to SIGCHLD and checks every child on each signal (O(children)); "
        "PIDFD mode and the Twisted adapter's default are unavailable; signals go by pid, and only to "
        "children childproc has not reaped",
        "Use SELECTIVE_REAP, which falls back to SIGCHLD and a per-child check, or MAINLOOP",
    ),
    Trap(
        "foreign-children",
        "this process already has children childproc did not make (pids {pids})",
        "a LIBXL or LIBXL_ALWAYS context reaps with waitpid(-1): one that starts now refuses, and one "
        "already running takes their exit statuses (their owners, subprocess or asyncio, see "
        "returncode 0; LIBXL_ALWAYS hands them to Hooks.reaped_callback)",
        "Use SELECTIVE_REAP (or PIDFD), which only reaps its own",
    ),
    Trap(
        "handler-replaced",
        "childproc's SIGCHLD handler was replaced by {handler} while childproc uses it",
        "the deaths of its children would go unseen: LIBXL, LIBXL_ALWAYS and SELECTIVE_REAP (without "
        "pidfds) raise HandlerReplacedError at their next call",
        "Whoever installed it owns SIGCHLD now: switch childproc to SigchldOwner.MAINLOOP and report "
        "reaped pids with ctx.childproc_reaped(), or remove that handler",
    ),
    Trap(
        "status-stolen",
        "child {pid}'s exit status was taken by someone else",
        "something in this process calls waitpid() on pids it did not make (waitpid(-1), a "
        "FastChildWatcher, a C library's SIGCHLD handler) while childproc is in {mode} mode",
        "Let one party reap: in MAINLOOP the host reaps and reports each pid with "
        "ctx.childproc_reaped(); otherwise stop the other reaper from reaping pids it did not make "
        "(see the mode guide)",
    ),
    Trap(
        "reaper-thread",
        "thread(s) {tids} wait for any child (waitpid(-1) or alike) beside a {modes} context",
        "such a wait reaps childproc's children too, and takes their exit statuses: childproc "
        "delivers ChildStolenError for each, and a LIBXL context's waitpid(-1) takes that code's "
        "children in turn",
        "Let one party reap: have that code wait for its own children by pid (os.waitpid(pid, 0), "
        "Popen.wait()), or let the host reap every child and report childproc's "
        "(SigchldOwner.MAINLOOP, ctx.childproc_reaped())",
    ),
    Trap(
        "unreaped-zombies",
        "this process has zombie children nobody reaped yet (pids {pids})",
        "each holds its pid, and its process group id, until it is reaped; many of them exhaust the "
        "pid space",
        "Whoever made them must wait for them (Popen.wait(), asyncio's Process.wait()), or hand them "
        "to childproc with ctx.adopt(pid); nothing here reaps children by any pid (no SIGCHLD "
        "handler, no thread in a wait() that may take any child, no LIBXL or LIBXL_ALWAYS context)",
    ),
    Trap(
        "unreported-exits",
        "children of a MAINLOOP context exited and nobody reported them to it ({which})",
        "childproc never learns of these exits: their callbacks do not run, whatever waits for them "
        "(wait(), run(), communicate()) waits on, and each stays outstanding; an unreaped one holds "
        "its pid, and its process group id, until it is reaped",
        "In MAINLOOP the host's loop must report every exit: pass each child it reaps (waitpid(-1) "
        "included) to ctx.childproc_reaped(pid, status), or, if it reaps only its own children, call "
        "ctx.sigchld_occurred() on each SIGCHLD (which reaps childproc's)",
    ),
    Trap(
        "threads-before-fork-server",
        "{count} thread(s) already running ({names})",
        "a fork server started now is forked from a multi-threaded process (a lock another thread "
        "held stays locked in it)",
        "Start the fork server before threads",
    ),
    Trap(
        "low-nofile",
        "the RLIMIT_NOFILE soft limit is {soft}",
        "childproc holds one pidfd per child; beyond the limit children are watched without one, "
        "by a SIGCHLD scan (slower)",
        "Raise it (resource.setrlimit, ulimit -n) if you run thousands of children at once",
    ),
    Trap(
        "no-cgroup-trees",
        "this process may not make cgroups here ({why})",
        "kill_tree=True gives each child its process group, not a cgroup: a descendant that calls "
        'setsid() escapes kill_tree(), and kill_tree="cgroup" raises StateError',
        "Run where the process may create cgroups (root, or a delegated cgroup v2 subtree, Linux 5.14+) "
        "if descendants must not escape",
    ),
    Trap(
        "sigchld-blocked",
        "SIGCHLD is blocked in every thread of this process",
        "a SIGCHLD handler never runs: a host's handler never hears of an exit, and LIBXL and "
        "LIBXL_ALWAYS learn of one only through their pidfds (without pidfds, only when a wait looks "
        "again); PIDFD and SELECTIVE_REAP with pidfds need no signal",
        "Unblock SIGCHLD in at least one thread (signal.pthread_sigmask), or use PIDFD",
    ),
]

#: Every trap, by key.
TRAPS: dict[str, Trap] = {trap.key: trap for trap in _LIST}


def ignored_why(why: str) -> str:
    """The ``why`` fact of the sigchld-ignored trap for what the kernel has:
    ``"SIG_IGN"`` or ``"SA_NOCLDWAIT"`` (as ``discards_statuses()`` says)."""
    return "handled with SA_NOCLDWAIT" if why == "SA_NOCLDWAIT" else why
