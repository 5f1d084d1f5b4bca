"""``python -m childproc doctor``: what this process and machine mean for child handling."""

from __future__ import annotations

import os
import platform
import resource
import signal
import threading
from typing import Any

from . import _cgroup, _process
from ._context import Context
from ._policy import rules_for
from ._sigchld import HANDLER, SA_NOCLDWAIT, describe, disposition, on_main_thread
from ._watchers import pidfd as _pidfd

__all__ = ["format_report", "report"]


def _disposition() -> tuple[str, str]:
    """(what SIGCHLD's disposition is, who owns it)."""
    d = disposition()
    current = d.python
    nocldwait = (
        " with SA_NOCLDWAIT (the kernel reaps children, exit statuses are lost)"
        if (d.flags is not None and d.flags & SA_NOCLDWAIT)
        else ""
    )
    if d.c_level_foreign:
        return (
            f"a handler installed outside Python (C code, at {d.address:#x}){nocldwait}",
            "the host (C code)",
        )
    if HANDLER.is_ours(current):
        return "childproc's handler", f"childproc ({HANDLER.user_count} context(s) use it)"
    if current == signal.SIG_DFL:
        return f"SIG_DFL (default){nocldwait}", "nobody"
    if current == signal.SIG_IGN:
        return "SIG_IGN (ignored: the kernel reaps children, exit statuses are lost)", "nobody"
    if current is None:
        return f"a handler installed outside Python (C code){nocldwait}", "the host (C code)"
    return f"Python handler {describe(current)}{nocldwait}", "the host"


def _wakeup_fd() -> str:
    if not on_main_thread():
        return "unknown (only readable on the main thread)"
    # The only way to read the slot is to swap it; put it straight back.
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        return f"fd {fd} (the host's, e.g. asyncio's; childproc never takes it)"
    return "none"


def report() -> dict[str, Any]:
    """The facts and warnings, as a dict (what ``doctor --json`` prints)."""
    disposition, owner = _disposition()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pidfds = _pidfd.supported()
    contexts = []
    for ctx in _process.live_contexts():
        if not isinstance(ctx, Context) or ctx.closed:
            continue
        rules = rules_for(ctx.mode)
        contexts.append(
            {
                "mode": ctx.mode.name,
                "watcher": ctx.watcher,
                "outstanding_children": len(ctx.children),
                "uses_sigchld_handler": ctx.uses_sigchld_handler,
                "reaper": rules.reaper.value,
            }
        )
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    warnings: list[str] = []
    ignored = HANDLER.discards_statuses(fresh=True)
    if ignored is not None:
        warnings.append(
            f"SIGCHLD is ignored ({ignored}): the kernel reaps children and throws their exit "
            "statuses away. SELECTIVE_REAP, PIDFD and MAINLOOP refuse to start children "
            "(SigchldIgnoredError); LIBXL works only from the main thread (its handler replaces "
            "the disposition while it has children); LIBXL_ALWAYS replaces it while it runs. "
            "Restore SIG_DFL, or use LIBXL_ALWAYS."
        )
    if owner.startswith("the host"):
        warnings.append(
            "a foreign SIGCHLD handler is installed: LIBXL and LIBXL_ALWAYS will refuse to start. "
            "Use MAINLOOP (report reaped pids) or, with pidfds, SELECTIVE_REAP or PIDFD."
        )
    if not pidfds:
        warnings.append(
            "no pidfds: SELECTIVE_REAP falls back to SIGCHLD and checks every child on each signal "
            "(O(children)); PIDFD mode is unavailable; signalling falls back to kill() on unreaped pids."
        )
    if threads:
        warnings.append(
            f"{len(threads)} thread(s) already running ({', '.join(threads[:5])}): a fork server "
            "started now would inherit a multi-threaded state; start it before threads."
        )
    if soft < 4096:
        warnings.append(
            f"RLIMIT_NOFILE soft limit is {soft}: childproc holds one pidfd per child; beyond the "
            "limit children are watched without one (slower), raise it if you run thousands."
        )
    no_cgroup_trees = _cgroup.why_not()
    return {
        "pid": os.getpid(),
        "trees": {"kill_tree": "process-group" if no_cgroup_trees else "cgroup", "why": no_cgroup_trees},
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sigchld_disposition": disposition,
        "sigchld_owner": owner,
        "wakeup_fd": _wakeup_fd(),
        "pidfds": pidfds,
        "rlimit_nofile": [soft, hard],
        "threads": threads,
        "contexts": contexts,
        "warnings": warnings,
    }


def format_report(data: dict[str, Any]) -> str:
    lines = [
        f"childproc doctor for pid {data['pid']} (Linux {data['kernel']}, Python {data['python']})",
        f"  SIGCHLD disposition : {data['sigchld_disposition']}",
        f"  SIGCHLD owner       : {data['sigchld_owner']}",
        f"  wakeup fd           : {data['wakeup_fd']}",
        "  pidfds              : "
        + ("yes (steal-free, O(1) per child, signal-free watching)" if data["pidfds"] else "NO"),
        f"  RLIMIT_NOFILE       : soft {data['rlimit_nofile'][0]}, hard {data['rlimit_nofile'][1]}",
        "  kill_tree=True      : "
        + (
            "a cgroup per tree (every descendant reached)"
            if data["trees"]["why"] is None
            else f"its process group ({data['trees']['why']}; see the trees page)"
        ),
        f"  other threads       : {len(data['threads'])}",
        f"  live contexts       : {len(data['contexts'])}",
    ]
    for c in data["contexts"]:
        lines.append(
            f"    - {c['mode']}: watcher {c['watcher']}, {c['outstanding_children']} outstanding, "
            f"{'uses' if c['uses_sigchld_handler'] else 'does not use'} the SIGCHLD handler"
        )
    if data["warnings"]:
        lines.append("warnings:")
        lines.extend(f"  ! {w}" for w in data["warnings"])
    else:
        lines.append("no warnings")
    return "\n".join(lines)
