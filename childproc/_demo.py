"""``python -m childproc demo``: each mode once, with real children, explained as it goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TextIO

from . import Context, Hooks, SigchldOwner, describe_status

_CHILD_CODE = "import sys; sys.exit(int(sys.argv[1]))"


def _fork_exiting(ctx: Context, code: int, note: Callable[[int, int], None]) -> int:
    pid = ctx.child_fork(note)
    if pid == 0:
        os._exit(code)
    return pid


def run(out: TextIO = sys.stdout) -> int:
    """Run the demo, writing to ``out``; return 0 if every status came back as expected."""
    failures = 0

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def check(what: str, got: str, want: str) -> None:
        nonlocal failures
        ok = got == want
        failures += not ok
        say(f"    {'ok ' if ok else 'BAD'} {what}: {got}" + ("" if ok else f" (expected: {want})"))

    def recorder(seen: dict[int, str]) -> Callable[[int, int], None]:
        def note(pid: int, status: int) -> None:
            seen[pid] = describe_status(status)

        return note

    say("childproc demo: one library, five ways to share SIGCHLD with its host\n")

    # 1. LIBXL -------------------------------------------------------------
    say("1. LIBXL (libxl's default): childproc owns SIGCHLD while it has children.")
    say("   Three children: one exits 0, one exits 3, one is killed with SIGTERM.")
    seen: dict[int, str] = {}
    with Context(SigchldOwner.LIBXL) as ctx:
        a = _fork_exiting(ctx, 0, recorder(seen))
        b = _fork_exiting(ctx, 3, recorder(seen))
        c = ctx.child_fork(recorder(seen))
        if c == 0:
            signal.pause()
            os._exit(0)
        installed = signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
        say(f"   handler installed while children run: {installed}")
        os.kill(c, signal.SIGTERM)
        while True:
            if not ctx.children:
                break
            ctx.wait(10)
        check(f"child {a}", seen[a], "exited with status 0")
        check(f"child {b}", seen[b], "exited with status 3")
        check(f"child {c}", seen[c], "killed by SIGTERM")
        say(f"   handler restored after the last child: {signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL}")

    # 2. MAINLOOP ----------------------------------------------------------
    say("\n2. MAINLOOP: the host reaps every child itself and tells childproc which were its.")
    seen = {}
    host_seen: dict[int, str] = {}
    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        lib_pid = _fork_exiting(ctx, 4, recorder(seen))
        host_pid = os.fork()
        if host_pid == 0:
            os._exit(9)
        say("   the host reaps with waitpid(-1) and reports each pid with ctx.childproc_reaped():")
        for _ in range(2):
            pid, status = os.waitpid(-1, 0)
            mine = ctx.childproc_reaped(pid, status)
            if not mine:
                host_seen[pid] = describe_status(status)
            say(f"     reaped {pid}: childproc_reaped() -> {mine}")
        check(f"childproc's child {lib_pid}", seen[lib_pid], "exited with status 4")
        check(f"host's child {host_pid}", host_seen[host_pid], "exited with status 9")

    # 3. LIBXL_ALWAYS ------------------------------------------------------
    say("\n3. LIBXL_ALWAYS: childproc reaps every child, and hands the host its own via reaped_callback.")
    seen = {}
    host_seen = {}

    def reaped_callback(pid: int, status: int, user: object) -> bool:
        host_seen[pid] = describe_status(status)
        return True

    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=reaped_callback))
        lib_pid = _fork_exiting(ctx, 5, recorder(seen))
        host_pid = os.fork()
        if host_pid == 0:
            os._exit(6)
        while True:
            if lib_pid in seen and host_pid in host_seen:
                break
            ctx.wait(10)
        check(f"childproc's child {lib_pid}", seen[lib_pid], "exited with status 5")
        check(f"host's child {host_pid} via reaped_callback", host_seen[host_pid], "exited with status 6")

    # 4. SELECTIVE_REAP ----------------------------------------------------
    say(
        "\n4. SELECTIVE_REAP (the default): childproc only ever waits on its own pids; "
        "subprocess keeps its returncodes."
    )
    seen = {}
    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
        lib_pid = _fork_exiting(ctx, 7, recorder(seen))
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, "8"])
        while True:
            if lib_pid in seen:
                break
            ctx.wait(10)
        check(f"childproc's child {lib_pid}", seen[lib_pid], "exited with status 7")
        check(f"subprocess.Popen child {proc.pid} returncode", str(proc.wait(10)), "8")
        say(f"   reaped through {ctx.watcher}; SIGCHLD handler needed: {ctx.uses_sigchld_handler}")

    # 5. PIDFD ---------------------------------------------------------------
    say("\n5. PIDFD: no SIGCHLD at all; pidfds only, from any thread. Here with a child handle:")
    say("   ctx.spawn() runs a program with posix_spawn (no copy of this interpreter).")
    events: list[str] = []
    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
        child = ctx.spawn([sys.executable, "-c", _CHILD_CODE, "12"], lambda c, ev: events.append(str(ev)))
        final = child.wait(10)
        check(f"spawned child {child.pid}", str(final), f"[{child.pid}] exited with status 12")
        installed = signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
        say(f"   SIGCHLD handler installed: {installed}; events delivered: {events}")

    say(
        "\nAll statuses arrived exactly as the children set them."
        if not failures
        else f"\n{failures} status(es) were wrong."
    )
    return 1 if failures else 0
