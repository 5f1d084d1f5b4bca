"""Exactly once under load: bursts of children, forks from many threads, several contexts."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import pytest

import childproc
from childproc import Context, Hooks, PidfdUnavailableError, SigchldOwner, _process
from childproc._watchers import pidfd as pidfd_mod

from .kids import Record, child_pause, drain, fork, fork_exit
from .procutil import wait_until

MODES = [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD]


def make(mode: SigchldOwner) -> Context:
    ctx = Context(SigchldOwner.LIBXL)
    if mode is not SigchldOwner.LIBXL:
        ctx.setmode(Hooks(chldowner=mode))
    return ctx


def spawn_exit(ctx: Context, rec: Record, code: int, gate: int | None = None) -> int:
    """A child made by ``posix_spawn`` (cheap from a big test process, where a fork
    copies its page tables) that exits with ``code``, once ``gate`` reads EOF if given;
    reported to ``rec`` as a wait status, like a ``child_fork`` callback."""
    script = f"read x; exit {code}" if gate is not None else f"exit {code}"
    child = ctx.spawn(["/bin/sh", "-c", script], lambda c, ev: rec(c.pid, ev.wait_status), stdin=gate)
    return child.pid


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_burst_of_2000_children_each_delivered_once(mode: SigchldOwner) -> None:
    """2000 children, one in ten forked, the rest spawned, each exit delivered once
    with its own status while the burst is still being made."""
    rec = Record()
    n = 2000
    with make(mode) as ctx:
        pids = []
        for i in range(n):
            make_child = fork_exit if i % 10 == 0 else spawn_exit
            pids.append(make_child(ctx, rec, i % 256))
            if i % 100 == 0:
                ctx.dispatch()  # reap as we go, as a real loop would
        drain(ctx, lambda: len(rec.calls) == n, timeout=120)
        assert not rec.duplicates()
        assert all(rec.code(p) == i % 256 for i, p in enumerate(pids))
        assert ctx.children == frozenset()


@pytest.mark.timeout(300)
def test_burst_exiting_together() -> None:
    """Children that all die at the same moment: SIGCHLDs coalesce, nothing is lost."""
    rec = Record()
    gate_r, gate_w = os.pipe()
    n = 2000
    with make(SigchldOwner.SELECTIVE_REAP) as ctx:
        pids = []
        for i in range(n):
            if i % 10:
                pids.append(spawn_exit(ctx, rec, i % 200, gate=gate_r))
                continue
            pid = ctx.child_fork(rec)
            if pid == 0:
                try:
                    os.close(gate_w)
                    os.read(gate_r, 1)  # blocks until the parent closes its end
                finally:
                    os._exit(i % 200)
            pids.append(pid)
        os.close(gate_r)
        assert ctx.children == frozenset(pids)  # nobody has exited yet
        os.close(gate_w)  # everybody exits now
        drain(ctx, lambda: len(rec.calls) == n, timeout=120)
        assert not rec.duplicates()
        assert [rec.code(p) for p in pids] == [i % 200 for i in range(n)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_8_threads_x_50_forks(mode: SigchldOwner) -> None:
    rec = Record()
    threads, per_thread = 8, 50
    forked: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with make(mode) as ctx:
        ctx.start_dispatch_thread()

        def worker(t: int) -> None:
            try:
                for i in range(per_thread):
                    pid = fork_exit(ctx, rec, (t * per_thread + i) % 256)
                    with lock:
                        forked.append(pid)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        deadline = time.monotonic() + 120
        while len(rec.calls) < threads * per_thread and time.monotonic() < deadline:
            time.sleep(0.01)
            _process.run_chores()
        assert len(rec.calls) == threads * per_thread, len(rec.calls)
        assert not rec.duplicates()
        assert set(rec.calls) == set(forked)
        assert rec.threads == {"childproc-dispatch"}


def test_exits_racing_child_fork_from_threads_with_main_dispatching() -> None:
    rec = Record()
    stop = threading.Event()
    with make(SigchldOwner.LIBXL_ALWAYS) as ctx:

        def worker() -> None:
            for _ in range(150):
                fork_exit(ctx, rec, 1)

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            ctx.wait(0.01)
        stop.set()
        drain(ctx, lambda: len(rec.calls) == 600)
        assert not rec.duplicates()


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_worker_fork_while_main_thread_blocked_in_c(
    mode: SigchldOwner, pidfds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux sends SIGCHLD to the forking thread; the Python handler waits for the
    main thread. A waiter on another thread must still hear of the death promptly."""
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
        if mode is SigchldOwner.PIDFD:
            with pytest.raises(PidfdUnavailableError, match="needs pidfds"):
                make(mode)
            return
    rec = Record()
    latency: list[float] = []
    with make(mode) as ctx:
        keeper = fork(ctx, rec, child_pause)  # handler installed (main thread) where it applies
        done = threading.Event()

        def worker() -> None:
            pid = ctx.child_fork(rec)
            if pid == 0:
                time.sleep(0.1)
                os._exit(3)
            t0 = time.monotonic()
            while pid not in rec.calls:
                ctx.wait(5)
            latency.append(time.monotonic() - t0 - 0.1)
            done.set()

        t = threading.Thread(target=worker)
        t.start()
        time.sleep(1.5)  # the main thread is blocked in C the whole time
        t.join()
        assert done.is_set()
        assert latency[0] < 0.5, f"death reached wait() {latency[0] * 1000:.0f} ms late"
        os.kill(keeper, signal.SIGKILL)
        drain(ctx, lambda: keeper in rec.calls)


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "peek-thread"])
def test_first_fork_on_worker_thread_without_handler(pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """LIBXL, no handler yet, first child forked on a worker thread: signal.signal is
    impossible there, so the death is seen through the pidfd (or a WNOWAIT peek
    thread), and the handler is installed and restored by later main-thread calls."""
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        box: list[int] = []

        def worker() -> None:
            box.append(fork_exit(ctx, rec, 9))
            while box[0] not in rec.calls:
                ctx.wait(5)

        t = threading.Thread(target=worker)
        t.start()
        t.join(20)
        assert not t.is_alive()
        assert rec.code(box[0]) == 9
        # The worker could neither install nor restore; the main thread settles it.
        ctx.dispatch()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert not _process.snapshot()["pending_main_thread_change"]


def test_setmode_on_worker_thread_installs_at_next_main_thread_call() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        t = threading.Thread(target=ctx.setmode, args=(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS),))
        t.start()
        t.join()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert _process.snapshot()["pending_main_thread_change"]
        pid = fork_exit(ctx, rec, 4)  # a main-thread call: the handler goes in first
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
        drain(ctx, lambda: pid in rec.calls)


@pytest.mark.timeout(30)
def test_a_callback_using_another_context_while_its_own_closes() -> None:
    """A close holds its teardown while it joins its dispatch thread. A callback on
    that thread that calls another context runs the process's chores, which finish
    interrupted teardowns: this one, in progress, is left to the closing thread (it
    waited for it: both threads waited for ever, as CI's dispatch thread did once
    when its own wait() ran the chores as its context began closing)."""
    in_callback, closing = threading.Event(), threading.Event()
    seen: list[int] = []
    with Context(SigchldOwner.PIDFD) as other:
        ctx = Context(SigchldOwner.PIDFD)
        ctx.start_dispatch_thread()

        def on_exit(child: object, event: object) -> None:
            in_callback.set()
            assert closing.wait(10)
            time.sleep(0.3)  # the main thread is in close(), joining this thread
            seen.append(other.dispatch())  # (the chores ran here)

        ctx.spawn(["true"], on_exit)
        assert in_callback.wait(10)
        closing.set()
        ctx.close()
    assert seen == [0]


# A close waits for its dispatch thread and for the threads waiting in the context; a
# callback may close a context (its own, another). Neither may wait for the other.
@pytest.mark.timeout(30)
def test_a_callback_closes_its_context_while_another_thread_closes_it() -> None:
    in_callback = threading.Event()
    ctx = Context(SigchldOwner.PIDFD)
    ctx.start_dispatch_thread()

    def on_exit(child: object, event: object) -> None:
        in_callback.set()
        time.sleep(0.3)  # the main thread is in close(), joining this thread
        ctx.close()  # (it went on waiting for that close to end)

    ctx.spawn(["true"], on_exit)
    assert in_callback.wait(10)
    ctx.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("rounds", range(3))
def test_a_callback_delivered_to_a_waiting_thread_closes_the_context(rounds: int) -> None:
    """The main thread, in child.wait(), delivers every due event; the callback closes
    the context while the dispatch thread waits for that delivery (its close joined
    the thread: for ever; delivered on the dispatch thread instead, its close waited
    5 s for the main thread to leave)."""
    took: list[float] = []
    ctx = Context(SigchldOwner.PIDFD)
    ctx.start_dispatch_thread()

    def on_exit(child: object, event: object) -> None:
        time.sleep(0.5)  # the other thread reaches the delivery
        t0 = time.monotonic()
        ctx.close()
        took.append(time.monotonic() - t0)

    ctx.spawn(["true"], on_exit)
    with contextlib.suppress(childproc.ClosedError):
        ctx.spawn(["sleep", "0.3"]).wait()
    assert wait_until(lambda: bool(took), timeout=10)
    assert took[0] < 2, took


@pytest.mark.timeout(30)
def test_callbacks_of_two_contexts_close_each_other() -> None:
    """Each close joined the other's dispatch thread, which was in a callback's close."""
    a, b = Context(SigchldOwner.PIDFD), Context(SigchldOwner.PIDFD)
    together = threading.Barrier(2)

    def closes(other: Context) -> Callable[[object, object], None]:
        def on_exit(child: object, event: object) -> None:
            together.wait(5)
            other.close()

        return on_exit

    for ctx, other in ((a, b), (b, a)):
        ctx.start_dispatch_thread()
        ctx.spawn(["true"], closes(other))
    assert wait_until(lambda: a.closed and b.closed, timeout=10)
    a.close()
    b.close()


@pytest.mark.timeout(30)
def test_a_callback_raising_systemexit_leaves_the_dispatch_thread_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """threading drops a SystemExit silently: the dispatch thread ended, and a run()
    on another thread, which leaves the dispatching to it, waited for ever."""
    with Context(SigchldOwner.PIDFD) as ctx:
        thread = ctx.start_dispatch_thread()
        ctx.spawn(["true"], lambda child, event: sys.exit(1))
        assert wait_until(lambda: "callback raised" in caplog.text, timeout=10)
        assert thread.is_alive()
        assert ctx.run(["/bin/sh", "-c", "exit 3"], timeout=10).returncode == 3


@pytest.mark.timeout(30)
def test_the_sigchld_handlers_restore_does_not_wait_for_the_process_lock() -> None:
    """The handler puts SIGCHLD's old disposition back (its last user left on another
    thread) on the main thread, which it interrupted anywhere: maybe holding a lock
    (threading's, a logging handler's) that the thread holding childproc's lock waits
    for. So it does not wait: a busy lock leaves the restore to the chores."""
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _process.LOCK:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(10)
        t0 = time.monotonic()
        _process._restore_from_handler()
        assert time.monotonic() - t0 < 1
        assert _process.CHORES
    finally:
        release.set()
        thread.join()
    _process.run_chores()
