"""Reading a process's child handling from ``/proc`` alone (``doctor --pid PID``, and the
threads and children of this process's own report).

What ``/proc`` tells about another process, without touching it:

* each thread's signal masks (``/proc/<pid>/task/<tid>/status``: ``SigBlk``
  per thread; ``SigIgn`` and ``SigCgt``, the process's dispositions): whether
  SIGCHLD is ignored, caught by a handler (whose, it cannot say), or blocked
  everywhere; ``SA_NOCLDWAIT`` is not shown;
* which threads are blocked in ``wait()`` right now (``wchan``: ``do_wait``), and,
  where ``/proc/<pid>/task/<tid>/syscall`` is readable, whether that wait may take
  any child (``waitpid(-1)``, ``waitid(P_ALL)``, a process group) or names one
  (``Popen.wait()``, asyncio's per-child watcher thread: not a reaper of others);
* its children (``/proc/<pid>/task/<tid>/children``), their states (``Z`` for a
  zombie) and commands;
* its open pidfds (``anon_inode:[pidfd]`` among its fds, where readable).

Whether "something reaps" the zombies is judged from those: a SIGCHLD
handler, a thread in ``wait()``, or pidfds to watch with.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator

from ._report import HELD_BY_A_PIDFD, ChildInfo, DoctorReport, SigchldInfo, ThreadInfo, findings_for
from ._watchers import pidfd as _pidfd

__all__ = ["SIGCHLD_BIT", "children_of", "open_pidfds", "process_stat", "report_on", "task_info"]

SIGCHLD_BIT = 1 << (17 - 1)  # SIGCHLD is 17 on Linux; masks in /proc count from signal 1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


#: (wait4, waitid) system call numbers, where known.
_WAIT_CALLS = {"x86_64": (61, 247), "aarch64": (260, 95)}.get(platform.machine())
_P_ALL, _P_PGID = 0, 2


def _waits_for_any(pid: int, tid: int) -> bool:
    """A thread blocked in ``wait()``: whether that wait may reap any child (True where
    its arguments cannot be read), rather than one it names by pid or pidfd, or only
    stops (``waitid`` without ``WEXITED``). A process group's wait counts as one that
    may: which group a zombie is in is not checked."""
    text = _read(f"/proc/{pid}/task/{tid}/syscall")
    if _WAIT_CALLS is None or not text:
        return True
    fields = text.split()
    try:
        number, first = int(fields[0]), int(fields[1], 16) & 0xFFFFFFFF
        options = int(fields[4], 16) if number == _WAIT_CALLS[1] else os.WEXITED
    except (IndexError, ValueError):
        return True
    signed = first - (1 << 32) if first >= 1 << 31 else first
    if number == _WAIT_CALLS[0]:  # wait4(pid, ...): -1 any, 0 or < -1 a process group
        return signed <= 0
    if number == _WAIT_CALLS[1]:  # waitid(idtype, id, infop, options): exits only with WEXITED
        return signed in (_P_ALL, _P_PGID) and bool(options & os.WEXITED)
    return True


def task_info(pid: int) -> Iterator[tuple[int, str, int, int, int, bool | None]]:
    """For each thread of ``pid``: (tid, name, SigBlk, SigIgn, SigCgt, blocked in a
    ``wait()`` that may reap any child)."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/status")
        if text is None:
            continue  # (it exited meanwhile)
        fields = _status_fields(text)
        wchan = _read(f"/proc/{pid}/task/{tid}/wchan")
        waiting = None if wchan is None else wchan.strip() in ("do_wait", "kernel_wait4", "do_sys_waitid")
        yield (
            tid,
            fields.get("Name", "?").strip(),
            int(fields.get("SigBlk", "0"), 16),
            int(fields.get("SigIgn", "0"), 16),
            int(fields.get("SigCgt", "0"), 16),
            waiting and _waits_for_any(pid, tid),
        )


def process_stat(pid: int) -> tuple[str, str, int] | None:
    """``pid``'s (state letter, command, parent pid) from ``/proc/<pid>/stat``; None
    if there is no such process (or it may not be read)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        return fields[0], command, int(fields[1])
    except (IndexError, ValueError):
        return None


def children_of(pid: int) -> list[tuple[int, str, str]]:
    """``pid``'s children: (pid, state letter, command)."""
    out: list[tuple[int, str, str]] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        for child in (_read(f"/proc/{pid}/task/{tid}/children") or "").split():
            stat = process_stat(int(child))
            if stat is not None:
                out.append((int(child), stat[0], stat[1]))
    return sorted(out)


def open_pidfds(pid: int) -> int | None:
    """How many pidfds ``pid`` holds (None where its fds may not be read)."""
    targets = pidfd_targets(pid)
    return None if targets is None else len(targets)


def pidfd_targets(pid: int) -> list[int] | None:
    """The processes ``pid`` holds pidfds for (a pid per pidfd, 0 where its fdinfo
    does not say; None where its fds may not be read)."""
    targets = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[pidfd]":
                continue
        except OSError:
            continue
        held = 0
        for line in (_read(f"/proc/{pid}/fdinfo/{fd}") or "").splitlines():
            if line.startswith("Pid:") and line.split()[1:2] != ["-1"]:
                held = int(line.split()[1])
        targets.append(held)
    return targets


def _nofile(pid: int) -> tuple[int, int] | None:
    for line in (_read(f"/proc/{pid}/limits") or "").splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            if soft.isdigit() and hard.isdigit():
                return int(soft), int(hard)
    return None


def report_on(pid: int) -> DoctorReport:
    """The :class:`~childproc.DoctorReport` of another process, from ``/proc``.
    Raises ``ProcessLookupError`` if there is no such process, and
    ``PermissionError`` if its ``/proc`` entries may not be read."""
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessLookupError(f"no process {pid}")
    if _read(f"/proc/{pid}/status") is None:
        raise PermissionError(f"/proc/{pid}/status may not be read (run as its user or as root)")
    tasks = list(task_info(pid))
    threads = tuple(
        ThreadInfo(tid, name, bool(blk & SIGCHLD_BIT), waiting) for tid, name, blk, _, _, waiting in tasks
    )
    ignored = bool(tasks) and bool(tasks[0][3] & SIGCHLD_BIT)
    caught = bool(tasks) and bool(tasks[0][4] & SIGCHLD_BIT)
    if ignored:
        sigchld = SigchldInfo("ignored", None, None, "nobody")
    elif caught:
        sigchld = SigchldInfo("caught", "by a handler /proc cannot name", None, "unknown")
    else:
        sigchld = SigchldInfo("default", None, None, "nobody")
    targets = pidfd_targets(pid)
    pidfds_open = None if targets is None else len(targets)
    held = set(targets or ())
    children = tuple(
        ChildInfo(p, state, command, HELD_BY_A_PIDFD if p in held else "unknown", pid)
        for p, state, command in children_of(pid)
    )
    nofile = _nofile(pid)
    reapers = tuple(
        ["a SIGCHLD handler"] * caught
        + [f"thread {t.tid} in wait()" for t in threads if t.waiting_for_children]
    )
    return DoctorReport(
        pid=pid,
        source="/proc",
        kernel=platform.release(),
        python=None,
        sigchld=sigchld,
        wakeup_fd=None,
        pidfds=_pidfd.supported(),
        open_pidfds=pidfds_open,
        kill_tree=None,
        subreaper=None,
        rlimit_nofile=nofile,
        threads=threads,
        contexts=None,
        children=children,
        reapers=reapers,
        findings=findings_for(
            sigchld,
            threads,
            children,
            pidfds=_pidfd.supported(),
            nofile=None if nofile is None else nofile[0],
            trees_why=None,
            reapers=reapers,
            modes=None,
        ),
    )
