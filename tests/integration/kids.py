"""Small helpers for tests that fork real children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import childproc

#: The modes in which childproc reaps (all but MAINLOOP).
REAPING_MODES = [
    childproc.SigchldOwner.SELECTIVE_REAP,
    childproc.SigchldOwner.PIDFD,
    childproc.SigchldOwner.LIBXL,
    childproc.SigchldOwner.LIBXL_ALWAYS,
]


class Record:
    """Collects callback invocations: pid -> list of statuses (so duplicates show)."""

    def __init__(self) -> None:
        self.calls: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def __call__(self, pid: int, status: int) -> None:
        with self.lock:
            self.calls.setdefault(pid, []).append(status)
            self.threads.add(threading.current_thread().name)

    def status(self, pid: int) -> int:
        (status,) = self.calls[pid]
        return status

    def code(self, pid: int) -> int:
        return os.waitstatus_to_exitcode(self.status(pid))

    def duplicates(self) -> dict[int, list[int]]:
        return {pid: s for pid, s in self.calls.items() if len(s) != 1}


def child_exit(code: int) -> Callable[[], None]:
    def body() -> None:
        os._exit(code)

    return body


def child_pause() -> None:
    signal.pause()
    os._exit(0)


def fork(ctx: childproc.Context, callback: Callable[[int, int], object], body: Callable[[], None]) -> int:
    """ctx.child_fork(callback); the child runs ``body`` and always ends with os._exit."""
    pid = ctx.child_fork(callback)
    if pid == 0:
        try:
            body()
        finally:
            os._exit(99)
    return pid


def fork_exit(ctx: childproc.Context, callback: Callable[[int, int], object], code: int) -> int:
    return fork(ctx, callback, child_exit(code))


def plain_fork_exit(code: int) -> int:
    """A child made without childproc (the host's own)."""
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    return pid


def drain(ctx: childproc.Context, until: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting; children still outstanding: {sorted(ctx.children)}")
        ctx.wait(left)


# -- Twisted: a reactor runs once per process, so each test runs one in a subprocess ----
_REACTOR_SCRIPT = """
import os, signal, sys, time
from twisted.internet import reactor, defer
import childproc
from childproc import twisted_host
out = {{}}
def task_sleep(s):
    d = defer.Deferred()
    reactor.callLater(s, d.callback, None)
    return d
@defer.inlineCallbacks
def main():
    try:
        ctx = twisted_host.TwistedContext(reactor)
{body}
        ctx.close()
    finally:
        reactor.stop()
reactor.callWhenRunning(main)
reactor.run()
{check}
"""


def run_on_a_reactor(body: str, check: str, timeout: float = 50) -> None:
    """Run ``body`` (the inside of an ``inlineCallbacks`` function with ``ctx``, a
    ``TwistedContext``, ``out``, a dict, and ``task_sleep(s)``) on a reactor in a new
    interpreter, then ``check``, which exits non-zero with what went wrong."""
    code = _REACTOR_SCRIPT.format(
        body=textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8), check=check
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
