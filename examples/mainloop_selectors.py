"""MAINLOOP mode: a host with its own selectors loop that owns SIGCHLD.

The host installs its own SIGCHLD handler and wakes its loop through
signal.set_wakeup_fd: the interpreter's C-level handler writes a byte to the
host's self-pipe the moment the signal arrives. (A Python-level handler that
wrote the byte itself would run only at the next bytecode, so a signal landing
just before the loop blocks in select() would sleep until the timeout.) The
loop reaps every child with waitpid(-1, WNOHANG) and offers each pid to
childproc with ctx.childproc_reaped(). childproc never touches SIGCHLD in
this mode. The host also forks a child of its own, which childproc answers
"not mine" for.

Run it with ``python examples/mainloop_selectors.py``.
"""

from __future__ import annotations

import os
import selectors
import signal
from types import FrameType

import childproc

LIBRARY_CODES = (0, 5, 7)  # exit codes of childproc's children
HOST_CODE = 42  # exit code of the host's own child


def drain(fd: int) -> None:
    """Empty a non-blocking pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main() -> int:
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # the host's self-pipe

    def on_sigchld(signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the wake-up fd has been written already."""

    previous = signal.signal(signal.SIGCHLD, on_sigchld)
    previous_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    sel = selectors.DefaultSelector()
    ctx = childproc.Context()
    try:
        ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner.MAINLOOP))
        sel.register(rfd, selectors.EVENT_READ, "sigchld")
        sel.register(ctx.fileno(), selectors.EVENT_READ, "childproc")

        library: dict[int, int] = {}  # pid -> exit code, filled by childproc's callback

        def on_exit(pid: int, status: int) -> None:
            library[pid] = os.waitstatus_to_exitcode(status)

        for code in LIBRARY_CODES:
            if ctx.child_fork(on_exit) == 0:
                os._exit(code)
        host_pid = os.fork()
        if host_pid == 0:
            os._exit(HOST_CODE)
        host: dict[int, int] = {}

        while len(library) < len(LIBRARY_CODES) or host_pid not in host:
            ready = sel.select(timeout=10)
            if not ready:
                print("timed out")
                return 1
            for key, _ in ready:
                if key.data == "childproc":
                    ctx.dispatch()  # childproc has work of its own to do
                    continue
                drain(rfd)
                while True:  # reap everything that has exited
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    if ctx.childproc_reaped(pid, status):
                        print(f"reaped {pid}: childproc's, callback ran")
                    else:
                        print(f"reaped {pid}: not childproc's, {childproc.describe_status(status)}")
                        host[pid] = os.waitstatus_to_exitcode(status)
    finally:
        sel.close()
        ctx.close()
        signal.set_wakeup_fd(previous_wakeup)
        signal.signal(signal.SIGCHLD, previous if previous is not None else signal.SIG_DFL)
        os.close(rfd)
        os.close(wfd)

    if sorted(library.values()) != sorted(LIBRARY_CODES) or host != {host_pid: HOST_CODE}:
        print(f"wrong statuses: childproc's {library}, host's {host}")
        return 1
    print(f"childproc's children exited with {sorted(library.values())}; the host's with {HOST_CODE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
