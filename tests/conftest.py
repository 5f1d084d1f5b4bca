"""Every test must leave the process as it found it: no zombie, no child, no new fd,
no SIGCHLD handler, no live childproc context. Checked after each test."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from childproc import _process
from tests.integration.procutil import children, fd_target, open_fds, wait_until


def _cleanup_children() -> list[str]:
    problems = []
    for pid, state in children().items():
        problems.append(f"child {pid} left behind (state {state})")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return problems


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before_fds = open_fds()
    before_sig = signal.getsignal(signal.SIGCHLD)
    before_threads = set(threading.enumerate())
    yield
    problems: list[str] = []
    # Threads the test started (dispatch threads, peek threads) must be gone; trio's idle
    # worker-thread cache is trio's.
    extra = [
        t
        for t in threading.enumerate()
        if t not in before_threads and t.is_alive() and not t.name.startswith("Trio thread")
    ]
    for t in extra:
        t.join(timeout=5)
    alive = [t.name for t in extra if t.is_alive()]
    if alive:
        problems.append(f"threads still running: {alive}")
    gc.collect()
    _process.run_chores()
    live = [c for c in _process.live_contexts() if not c.closed]
    if live:
        problems.append(f"contexts not closed: {live}")
        for c in live:
            c.close()
    if not wait_until(lambda: not children(), timeout=2.0):
        problems.extend(_cleanup_children())
    after_sig = signal.getsignal(signal.SIGCHLD)
    if after_sig != before_sig:
        problems.append(f"SIGCHLD disposition changed: {before_sig!r} -> {after_sig!r}")
        signal.signal(signal.SIGCHLD, before_sig if before_sig is not None else signal.SIG_DFL)
    gc.collect()
    leaked = open_fds() - before_fds
    if leaked:
        problems.append("fds leaked: " + ", ".join(f"{fd}->{fd_target(fd)}" for fd in sorted(leaked)))
    snap = _process.snapshot()
    if snap["handler_installed"] or snap["handler_users"] or snap["owned_pids"]:
        problems.append(f"process-wide state left: {snap}")
    if problems:
        pytest.fail("test left a mess:\n  " + "\n  ".join(problems), pytrace=False)
