"""Every test must leave the process as it found it: no zombie, no child, no new fd,
no changed signal disposition or signal mask, no live childproc context, no tree's
cgroup, no subreaper mark. Checked after each test."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from childproc import _cgroup, _process
from childproc._subreaper import SUBREAPER, is_subreaper
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


#: Dispositions a test may change and must put back (SIGCHLD is childproc's business;
#: the others are what the interrupt and stop tests play with; SIGALRM is
#: pytest-timeout's, which sets and clears it around each phase of a test).
WATCHED_SIGNALS = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)


def _cleanup_trees() -> list[str]:
    """cgroups of trees (kill_tree=True) still there: a tree whose processes were
    left running, or a cgroup not removed once empty."""
    home = _cgroup.existing_home()
    if home is None:
        return []
    problems = [f"tree {name} still live (its child was never retired)" for name in sorted(home.live)]

    def gone() -> bool:
        home.sweep_pending()  # (what the library does at its next tree, and at exit: empty ones only)
        return not home.trees_on_disk()

    wait_until(gone, timeout=2.0)
    for name in home.trees_on_disk():
        tree = _cgroup.CgroupTree(os.path.join(home.dir, name), name)
        problems.append(f"tree cgroup {tree.path} left behind (processes {tree.pids()})")
        tree.kill()
        tree.wait_empty(2.0)
        tree.remove()
    home.live.clear()
    home.pending.clear()
    return problems


def _dispositions() -> dict[signal.Signals, object]:
    return {sig: signal.getsignal(sig) for sig in WATCHED_SIGNALS}


def _blocked() -> set[int]:
    """The main thread's signal mask (a lost old mask once left SIGINT blocked for good)."""
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The leak check collects garbage twice after every test; once the test modules
    (and pytest, hypothesis, trio, Twisted ...) are loaded, their objects are moved out
    of the collector's sight, so that each collection scans only what tests made
    (about 25 ms a collection otherwise: a minute of each suite's CPU). hypothesis is
    loaded first wherever it was not: its start-up hooks (trio's) look for the referrers
    of what they register, which frozen objects would hide."""
    import hypothesis  # noqa: F401, PLC0415

    gc.collect()
    gc.freeze()


def _unknown_threads() -> int:
    """The threads of this process that ``threading`` does not know: a context freed
    while open is closed on one (``Context.__del__``), which the checks below wait
    for. Counted from ``/proc`` (a thread is there once started, before it runs)."""
    known = [t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)]
    return len(os.listdir("/proc/self/task")) - len(known)  # (a dummy may outlive its thread)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before_fds = open_fds()
    before_sig = _dispositions()
    before_mask = _blocked()
    before_threads = set(threading.enumerate())
    before_subreaper = is_subreaper()
    before_unknown = _unknown_threads()
    yield
    problems: list[str] = []
    # The process lock not left held (a KeyboardInterrupt that skipped a `with LOCK:`
    # would leave it so on 3.13: see tests/backedges.py); first, as threads wait for it.
    if _process.held_here():
        problems.append("childproc's process lock left held by the test's thread")
        while _process.held_here():
            _process.LOCK.release()
    # Threads the test started (dispatch threads, peek threads) must be gone; trio's idle
    # worker-thread cache is trio's.
    extra = [
        t
        for t in threading.enumerate()
        if t not in before_threads
        and t.is_alive()
        and not t.name.startswith("Trio thread")
        and not isinstance(t, threading._DummyThread)  # (a thread threading did not start)
    ]
    for t in extra:
        t.join(timeout=5)
    alive = [t.name for t in extra if t.is_alive()]
    if alive:
        problems.append(f"threads still running: {alive}")
    gc.collect()
    if not wait_until(lambda: _unknown_threads() <= before_unknown, timeout=5.0):
        problems.append("a context freed while open was not closed (its thread still runs)")
    _process.run_chores()
    live = [c for c in _process.live_contexts() if not c.closed]
    if live:
        problems.append(f"contexts not closed: {live}")
        for c in live:
            c.close()
    if not wait_until(lambda: not children(), timeout=2.0):
        problems.extend(_cleanup_children())
    problems.extend(_cleanup_trees())
    after_sig = _dispositions()
    for sig, was in before_sig.items():
        if after_sig[sig] != was:
            problems.append(f"{sig.name} disposition changed: {was!r} -> {after_sig[sig]!r}")
            signal.signal(sig, was if was is not None else signal.SIG_DFL)  # type: ignore[arg-type]
    after_mask = _blocked()
    if after_mask != before_mask:
        problems.append(f"signal mask changed: {sorted(before_mask)} -> {sorted(after_mask)}")
        signal.pthread_sigmask(signal.SIG_SETMASK, before_mask)
    gc.collect()
    leaked = open_fds() - before_fds
    if leaked:
        problems.append("fds leaked: " + ", ".join(f"{fd}->{fd_target(fd)}" for fd in sorted(leaked)))
    if is_subreaper() != before_subreaper or SUBREAPER.held:
        now = is_subreaper()
        problems.append(f"subreaper mark left: {before_subreaper} -> {now} (held: {SUBREAPER.held})")
        SUBREAPER.release_all()
    snap = _process.snapshot()
    if snap["handler_installed"] or snap["handler_users"] or snap["owned_pids"]:
        problems.append(f"process-wide state left: {snap}")
    if problems:
        pytest.fail("test left a mess:\n  " + "\n  ".join(problems), pytrace=False)
