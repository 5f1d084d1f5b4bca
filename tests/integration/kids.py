"""Small helpers for tests that fork real children."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import childproc


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
