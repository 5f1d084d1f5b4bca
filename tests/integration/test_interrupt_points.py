"""A KeyboardInterrupt (or a thread switch) at one precise point inside the core.

Each test here was a reviewer's reproduction script: it injects the interruption
at exactly one point where CPython really would run a Python-level signal handler
(and so raise ``KeyboardInterrupt`` from it), then checks that childproc finishes
what was interrupted: the exit is delivered exactly once with its status, no pid
stays behind in ``OWNERS``, no fd stays open or readable, no zombie is left, and
SIGCHLD's disposition is put back.

Where CPython 3.10-3.13 runs signal handlers: at a function's entry, at a
backward jump, and right after a call returns (the eval breaker is checked by the
call instructions). A blocking system call interrupted by a signal (``EINTR``)
runs the handler too, and raises its exception instead of retrying (PEP 475).
Each injection below raises at one such point, once, and is undone by
``monkeypatch`` before the leak check (``tests/conftest.py``) runs.

These are white-box tests: they reach into ``childproc``'s internals to place the
interruption, and only there.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from childproc import (
    PIPE,
    Child,
    ChildEvent,
    ChildStolenError,
    Context,
    Hooks,
    SigchldOwner,
    _children,
    _ledger,
    _process,
    _sigchld,
    _starter,
    _stdio,
    _teardown,
    _trees,
)

from .procutil import proc_state, wait_until
from .test_hostile import default_sigint

ALL_MODES = [
    SigchldOwner.LIBXL,
    SigchldOwner.LIBXL_ALWAYS,
    SigchldOwner.SELECTIVE_REAP,
    SigchldOwner.PIDFD,
]
#: The modes that reap only their own children (``reap_after_callback``, stealing).
SELECTIVE_MODES = [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD]
LIBXL_MODES = [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS]


def _ids(modes: list[SigchldOwner]) -> list[str]:
    return [m.name for m in modes]


# -- helpers ---------------------------------------------------------------------
class Once:
    """Raises ``KeyboardInterrupt`` the first time it is fired; records that it did."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.fired = False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt(f"simulated: {self.where}")


def after_return(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    once: Once,
    when: Callable[..., bool] | None = None,
) -> None:
    """Replace ``owner.name`` with a wrapper that calls the original and then raises
    ``KeyboardInterrupt`` once, as a signal handler run right after the call returned
    would (if ``when(*args)`` says so)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when is None or when(*args):
            once.fire()
        return result

    monkeypatch.setattr(owner, name, wrapper)


def wait_exited(pid: int) -> None:
    """Until ``pid`` is a zombie: its exit is ready to be collected (no sleep guessed)."""
    assert wait_until(lambda: proc_state(pid) == "Z", timeout=10.0), f"child {pid} did not exit"


def unknown_child_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "childproc" and "unknown child" in r.getMessage()
    ]


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def assert_pidfd_closed(pidfd: int | None) -> None:
    """The child's pidfd number names no pidfd any more (closed, or reused by someone
    else for another file)."""
    if pidfd is None:
        return
    try:
        target = os.readlink(f"/proc/self/fd/{pidfd}")
    except OSError:
        return
    assert "pidfd" not in target, f"pidfd {pidfd} still open ({target})"


def assert_quiet(ctx: Context) -> None:
    """Nothing outstanding: a dispatch delivers nothing and the epoll is not readable."""
    assert ctx.children == frozenset()
    assert ctx.dispatch() == 0
    assert not readable(ctx.fileno()), "fileno() readable with nothing outstanding"
    assert ctx.wait(0) == 0


def assert_new_context_works(mode: SigchldOwner) -> None:
    """An unrelated new context in the same mode starts a child and delivers its exit."""
    got: list[int | None] = []
    with Context(mode) as ctx:
        ctx.spawn(["/bin/sh", "-c", "exit 4"], lambda c, ev: got.append(ev.returncode))
        assert ctx.wait(10) == 1
    assert got == [4]


@pytest.fixture
def host_sigchld() -> Iterator[Callable[[Any], None]]:
    """Set SIGCHLD's disposition as a host would; the original is put back afterwards."""
    before = signal.getsignal(signal.SIGCHLD)

    def set_disposition(handler: Any) -> None:
        signal.signal(signal.SIGCHLD, handler)

    try:
        yield set_disposition
    finally:
        signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)


# -- 1. after ``del OWNERS[pid]`` in Children.gone_locked ---------------------------
class DiscardInterrupted(set[int]):
    """``stop_watchers`` whose ``discard`` raises once, after it did its work."""

    def __init__(self, once: Once) -> None:
        super().__init__()
        self.once = once

    def discard(self, pid: object) -> None:
        super().discard(pid)
        self.once.fire()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ALL_MODES, ids=_ids(ALL_MODES))
def test_ki_after_owners_del(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """KI in ``Children.gone_locked`` after ``del _process.OWNERS[pid]``, where the
    ``stop_watchers.discard(pid)`` call returns (a real check point: after a call).

    The replay must still route the child as this context's own: delivered once, no
    "unknown child" warning (LIBXL), no ``reaped_callback`` call (LIBXL_ALWAYS), no
    AssertionError on later calls (SELECTIVE_REAP, PIDFD), and close() finishes.
    """
    caplog.set_level(logging.WARNING, logger="childproc")
    got: list[tuple[int, int | None]] = []
    foreign: list[int] = []

    def reaped(pid: int, status: int, user: object) -> bool:
        foreign.append(pid)
        return True

    hooks = Hooks(chldowner=mode, reaped_callback=reaped if mode is SigchldOwner.LIBXL_ALWAYS else None)
    ctx = Context(hooks=hooks)
    try:
        child = ctx.spawn(["/bin/sh", "-c", "exit 7"], lambda c, ev: got.append((c.pid, ev.returncode)))
        pid, pidfd = child.pid, child.pidfd
        once = Once("after stop_watchers.discard() returned")
        monkeypatch.setattr(ctx._kids.reaping, "stop_watchers", DiscardInterrupted(once))
        wait_exited(pid)
        with pytest.raises(KeyboardInterrupt, match="after stop_watchers"):
            ctx.wait(10)
        assert once.fired
        delivered = 0
        for _ in range(3):
            delivered += ctx.wait(1)
        assert delivered == 1
        assert got == [(pid, 7)]
        assert foreign == []
        assert unknown_child_warnings(caplog) == []
        assert pid not in _process.OWNERS
        assert_quiet(ctx)
    finally:
        ctx.close()
    assert ctx.closed
    assert proc_state(pid) is None, "child left as a zombie"
    assert_pidfd_closed(pidfd)
    assert_new_context_works(mode)
    assert got == [(pid, 7)] and foreign == []
    assert unknown_child_warnings(caplog) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", SELECTIVE_MODES, ids=_ids(SELECTIVE_MODES))
def test_ki_in_gone_locked_at_close_leaves_no_pid_owned(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KI inside ``Children.gone_locked`` during ``close()``, once the ledger forgot the
    child handed to the orphanage (where ``watcher.remove`` returns): the teardown
    finished by the next close() no longer sees the child, and its ``OWNERS`` entry
    stayed for good (CI's torture run: every later test failed the leak check)."""
    ctx = Context(mode=mode)
    child = ctx.spawn(["sleep", "30"])
    pid = child.pid
    once = Once("after watcher.remove() returned")
    after_return(monkeypatch, type(ctx._kids.watcher), "remove", once)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (it ran on: an orphan now)
            with pytest.raises(KeyboardInterrupt, match="after watcher"):
                ctx.close()
            ctx.close()
        assert once.fired and pid not in _process.OWNERS
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: proc_state(pid) is None, timeout=10), "the orphanage did not reap it"


@pytest.mark.timeout(60)
def test_ki_as_close_begins_leaves_no_half_closed_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """KI where close() calls ``teardown_started`` (at its entry): the context was
    marked closed but its teardown recorded nowhere, so no later call finished it, and
    once freed it was taken for closed (its child ran on, its handler stayed). Now
    it is either still open or its teardown is among the chores."""
    ctx = Context(mode=SigchldOwner.PIDFD)
    pid = ctx.spawn(["sleep", "30"], kill_on_close=True).pid

    def interrupted(_: object) -> None:
        raise KeyboardInterrupt("simulated: entering teardown_started")

    monkeypatch.setattr(_process, "teardown_started", interrupted)
    with pytest.raises(KeyboardInterrupt, match="teardown_started"):
        ctx.close()
    monkeypatch.undo()
    assert not ctx.closed or ctx in _process._unfinished
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # ("unclosed": it is, still)
        del ctx
        gc.collect()  # (closed on a thread of its own: its child killed and reaped)
        assert wait_until(lambda: proc_state(pid) is None, timeout=10), proc_state(pid)


# -- 2. after the ledger's commit (Ledger.exited / Ledger.stolen) -------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ALL_MODES, ids=_ids(ALL_MODES))
def test_ki_after_ledger_exited(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """KI right after ``Ledger.exited()`` returns in ``Reaping.accept_exit`` (after the
    commit: the pid is out of ``running``, the exit is queued). The replay must still
    do ``Children.gone_locked``: OWNERS drops the pid, the pidfd is closed and out of
    the epoll (``fileno()`` not readable), the exit is delivered once."""
    caplog.set_level(logging.WARNING, logger="childproc")
    once = Once("after Ledger.exited() returned")
    after_return(monkeypatch, _ledger.Ledger, "exited", once)
    got: list[int | None] = []
    ctx = Context(mode)
    try:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"], lambda c, ev: got.append(ev.returncode))
        pid, pidfd = child.pid, child.pidfd
        wait_exited(pid)
        with pytest.raises(KeyboardInterrupt, match="after Ledger"):
            ctx.wait(10)
        assert once.fired
        assert ctx.wait(5) == 1
        assert got == [3]
        assert pid not in _process.OWNERS
        assert_pidfd_closed(pidfd)
        assert_quiet(ctx)
        assert unknown_child_warnings(caplog) == []
    finally:
        ctx.close()
    assert proc_state(pid) is None, "child left as a zombie"
    assert got == [3]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", SELECTIVE_MODES, ids=_ids(SELECTIVE_MODES))
def test_ki_after_ledger_stolen(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same point on the other path: KI right after ``Ledger.stolen()`` returns in
    ``Reaping.accept_gone`` (someone else reaped our child: ECHILD). The loss is
    delivered once (ChildStolenError), and the bookkeeping is finished all the same.

    Only the modes that reap by pid see ECHILD for one child (LIBXL's waitpid(-1)
    cannot tell a stolen child from one not dead yet)."""
    caplog.set_level(logging.WARNING, logger="childproc")
    once = Once("after Ledger.stolen() returned")
    after_return(monkeypatch, _ledger.Ledger, "stolen", once)
    got: list[object] = []
    ctx = Context(mode)
    try:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"], lambda c, ev: got.append(ev.returncode))
        pid, pidfd = child.pid, child.pidfd
        wait_exited(pid)
        os.waitpid(pid, 0)  # the host steals it
        with pytest.raises(KeyboardInterrupt, match="after Ledger"):
            ctx.wait(10)
        assert once.fired
        with pytest.raises(ChildStolenError):
            ctx.wait(5)
        assert got == []
        assert ctx.wait(1) == 0  # delivered once: not raised again
        assert pid not in _process.OWNERS
        assert_pidfd_closed(pidfd)
        assert_quiet(ctx)
        assert unknown_child_warnings(caplog) == []
    finally:
        ctx.close()


# -- 3. after Ledger.peeked (reap_after_callback) -----------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", SELECTIVE_MODES, ids=_ids(SELECTIVE_MODES))
def test_ki_after_ledger_peeked(mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``reap_after_callback`` child; KI right after ``Ledger.peeked()`` returns in
    ``Reaping.apply``. The child must still be recorded as a zombie: delivered once,
    then reaped (no zombie before or after close()), its pidfd out of the epoll.

    Only SELECTIVE_REAP and PIDFD take ``reap_after_callback``."""
    once = Once("after Ledger.peeked() returned")
    after_return(monkeypatch, _ledger.Ledger, "peeked", once)
    got: list[int | None] = []
    ctx = Context(mode)
    try:
        child = ctx.spawn(
            ["/bin/sh", "-c", "exit 5"], lambda c, ev: got.append(ev.returncode), reap_after_callback=True
        )
        pid, pidfd = child.pid, child.pidfd
        wait_exited(pid)
        with pytest.raises(KeyboardInterrupt, match="after Ledger"):
            ctx.wait(10)
        assert once.fired
        assert ctx.wait(5) == 1
        assert got == [5]
        assert proc_state(pid) is None, "not reaped after its callback"
        assert pid not in ctx._kids.zombies
        assert pid not in _process.OWNERS
        assert_pidfd_closed(pidfd)
        assert_quiet(ctx)
    finally:
        ctx.close()
    assert proc_state(pid) is None, "child left as a zombie"
    assert got == [5]


# -- 4. Ctrl-C in the blocking waitid of a kill_on_close release --------------------
RELEASE_MODES = ALL_MODES


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", RELEASE_MODES, ids=_ids(RELEASE_MODES))
def test_ki_in_release_kill(mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Child.release()`` of a ``kill_on_close`` child blocks in
    ``os.waitid(..., WEXITED)`` until the SIGKILLed child dies. Ctrl-C there: the
    syscall fails with EINTR, CPython runs the handler, and waitid raises its
    KeyboardInterrupt (nothing reaped). Simulated by a ``waitid`` (in
    ``childproc._teardown`` only) that raises once instead of waiting.

    The child must still be reaped: by the next call, or by close() at the latest;
    no zombie, pidfd closed, OWNERS clean."""
    once = Once("EINTR in the blocking waitid, the handler raised")
    real_waitid = os.waitid

    def waitid(*args: Any) -> Any:
        once.fire()
        return real_waitid(*args)

    fake_os = types.SimpleNamespace(**{k: v for k, v in vars(os).items() if not k.startswith("__")})
    fake_os.waitid = waitid
    monkeypatch.setattr(_teardown, "os", fake_os)

    ctx = Context(mode)
    try:
        child = ctx.spawn(["sleep", "30"], kill_on_close=True)
        pid, pidfd = child.pid, child.pidfd
        with pytest.raises(KeyboardInterrupt, match="EINTR"):
            child.release()
        assert once.fired
        child.release()  # again: returns (released), the reaping is left to childproc
        assert child.released
        ctx.dispatch()
    finally:
        ctx.close()
    assert proc_state(pid) is None, "the killed child was left (zombie or running)"
    assert pid not in _process.OWNERS
    assert_pidfd_closed(pidfd)


# -- 5. two threads in wait()'s pre-check while a callback runs ---------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("raising", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("mode", ALL_MODES, ids=_ids(ALL_MODES))
def test_race_next_event_loses_no_exit(mode: SigchldOwner, raising: bool) -> None:
    """``Ledger.next_event()`` drops done events from the queue's head (a mutation).
    While a callback runs, its event sits done at the head. Two threads in
    ``ctx.wait()``'s pre-check could both see that done head and both ``popleft()``:
    the second pop would drop the next, undelivered exit.

    Thread B delivers e1 (its callback blocks); thread A is held (a trace hook
    standing for a GIL switch, which CPython may make at any instruction) between
    reading the done head and its ``queue.popleft()``; thread C runs its pre-check
    meanwhile. e2 must be delivered exactly once. With ``raising``, e1's callback
    raises, and delivery's own look at the queue (to keep ``fileno()`` readable)
    runs while A is held."""
    got: list[tuple[str, int | None]] = []
    in_cb, release_cb = threading.Event(), threading.Event()

    def slow_cb(c: Child, ev: ChildEvent) -> None:
        got.append(("e1", ev.returncode))
        in_cb.set()
        release_cb.wait(10)
        if raising:
            raise RuntimeError("e1's callback raised")

    def thread_b() -> None:
        with contextlib.suppress(RuntimeError):
            ctx.dispatch()

    code = _ledger.Ledger.next_event.__code__
    with open(code.co_filename) as f:
        lines = f.read().splitlines()
    paused, resume = threading.Event(), threading.Event()

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: types.FrameType, event: str, arg: object) -> Any:
            if event == "line" and "queue.popleft()" in lines[frame.f_lineno - 1] and not paused.is_set():
                paused.set()
                resume.wait(10)
            return local

        return local

    def thread_a() -> None:
        sys.settrace(tracer)
        try:
            ctx.wait(2)
        finally:
            sys.settrace(None)

    ctx = Context(mode)
    threads: list[threading.Thread] = []
    try:
        c1 = ctx.spawn(["/bin/sh", "-c", "exit 1"], slow_cb)
        wait_exited(c1.pid)
        b = threading.Thread(target=thread_b, name="B")
        threads.append(b)
        b.start()
        assert in_cb.wait(10), "e1's callback did not run"
        c2 = ctx.spawn(["/bin/sh", "-c", "exit 2"], lambda c, ev: got.append(("e2", ev.returncode)))
        wait_exited(c2.pid)
        with _process.LOCK:
            ctx._kids.collect_locked(None)  # e2 queued, as another thread's dispatch would
        queue = ctx._kids.ledger.queue
        assert [(e.pid, e.done) for e in queue] == [(c1.pid, True), (c2.pid, False)]

        a = threading.Thread(target=thread_a, name="A")
        threads.append(a)
        a.start()
        assert paused.wait(10), "thread A never reached next_event's popleft()"
        c = threading.Thread(target=lambda: ctx.wait(2), name="C")
        threads.append(c)
        c.start()
        c.join(0.2)  # C runs its pre-check (or waits for the lock A holds)
        resume.set()
        a.join(0.1)
        release_cb.set()
        for t in threads:
            t.join(20)
            assert not t.is_alive(), f"thread {t.name} is stuck"
        assert sorted(got) == [("e1", 1), ("e2", 2)]
        assert ctx.children == frozenset()
        assert ctx.wait(1) == 0
        assert len(queue) == 0
    finally:
        resume.set()
        release_cb.set()
        for t in threads:
            t.join(20)
        ctx.close()


# -- 6. the epoll fd closed by the host and its number reused -----------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ALL_MODES, ids=_ids(ALL_MODES))
def test_close_leaves_host_fd_on_epoll_number(mode: SigchldOwner, tmp_path: Path) -> None:
    """A host closed fds it does not own (``closerange`` in a daemonize step) and
    reopened one at the epoll's number: ``ctx.close()`` must not close the host's
    file (the identity check every other childproc fd gets)."""
    path = tmp_path / "host-file"
    path.write_text("the host's\n")
    ctx = Context(mode)
    n = ctx.fileno()
    host = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(host, n)  # closes the epoll and puts the host's file at its number
        ctx.close()
        assert fd_is_open(n), "childproc closed the host's fd"
        assert os.path.samestat(os.fstat(n), os.stat(path))
        assert os.pread(n, 100, 0) == b"the host's\n"
    finally:
        ctx.close()
        os.close(host)
        if fd_is_open(n) and os.path.samestat(os.fstat(n), os.stat(path)):
            os.close(n)


# -- 7. after the swap in SigchldHandler._install ------------------------------------
INSTALL_CASES = [
    pytest.param(SigchldOwner.LIBXL_ALWAYS, signal.SIG_IGN, id="LIBXL_ALWAYS-SIG_IGN"),
    pytest.param(SigchldOwner.LIBXL_ALWAYS, signal.SIG_DFL, id="LIBXL_ALWAYS-SIG_DFL"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "host_disposition"), INSTALL_CASES)
def test_ki_after_handler_install(
    mode: SigchldOwner,
    host_disposition: signal.Handlers,
    monkeypatch: pytest.MonkeyPatch,
    host_sigchld: Callable[[Any], None],
) -> None:
    """KI right after ``_signal.signal()`` returns in ``SigchldHandler._install`` (the
    swap done, not recorded yet). ``set_user``'s except path must recognise the swap
    and put the host's disposition back (a daemon's SIG_IGN, say), leaving no handler
    of childproc's in SIGCHLD and no user; the next setmode works and close() restores
    the host's disposition again."""
    once = Once("after _signal.signal() returned")
    # An install passes our handler; a restore passes 0 or 1 (SIG_DFL, SIG_IGN).
    after_return(monkeypatch, _sigchld, "_raw_signal", once, when=lambda sig, handler: handler not in (0, 1))
    host_sigchld(host_disposition)
    ctx = Context()
    try:
        with pytest.raises(KeyboardInterrupt, match="after _signal"):
            ctx.setmode(Hooks(chldowner=mode))
        assert once.fired
        assert signal.getsignal(signal.SIGCHLD) == host_disposition
        assert not _sigchld.HANDLER.installed
        assert _sigchld.HANDLER.user_count == 0
        # Once more, not interrupted: installed, then put back by close().
        ctx.setmode(Hooks(chldowner=mode))
        assert _sigchld.HANDLER.is_ours(signal.getsignal(signal.SIGCHLD))
    finally:
        ctx.close()
    assert signal.getsignal(signal.SIGCHLD) == host_disposition
    assert not _sigchld.HANDLER.installed and _sigchld.HANDLER.user_count == 0


# -- 8. in the SIGINT mask around fork() (Children.start_locked) -----------------------
def _main_thread_mask() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ALL_MODES, ids=_ids(ALL_MODES))
@pytest.mark.parametrize("where", ["block", "restore"])
def test_ki_from_the_sigint_mask_around_fork(
    mode: SigchldOwner, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pthread_sigmask`` runs pending signal handlers after it changed the mask, so
    an interrupt already due when ``fork()`` begins is raised by the call that blocks
    SIGINT (the mask changed, the old one not returned), and one that arrived while
    SIGINT was blocked is raised by the call that restores it (the child exists).
    Either way the caller gets the KeyboardInterrupt, the thread's signal mask is what
    it was (a lost old mask kept SIGINT blocked for the rest of the process: every
    later Ctrl-C vanished), and a child that was made is delivered exactly once
    (SIGKILLed by the interrupted fork, whose caller has no handle, unless it had
    exited already)."""
    how = signal.SIG_BLOCK if where == "block" else signal.SIG_SETMASK
    parent = os.getpid()
    once = Once(f"pthread_sigmask({where})")
    after_return(
        monkeypatch,
        _children,
        "_pthread_sigmask",
        once,
        when=lambda h, sigs: (
            os.getpid() == parent and h == how and (h != signal.SIG_BLOCK or signal.SIGINT in sigs)
        ),
    )
    before = _main_thread_mask()
    got: list[tuple[int, int]] = []

    def fork(code: int) -> None:
        if ctx.fork(lambda c, ev: got.append((c.pid, ev.status))) is None:
            os._exit(code)

    with Context(mode) as ctx:
        with pytest.raises(KeyboardInterrupt, match="pthread_sigmask"):
            fork(6)
        assert once.fired
        assert _main_thread_mask() == before
        assert len(ctx.children) == (0 if where == "block" else 1)
        fork(7)
        while ctx.children:
            ctx.wait(10)
        statuses = sorted(rc for _, rc in got)
        if where == "block":
            assert statuses == [7]
        else:
            assert statuses in ([6, 7], [7, signal.SIGKILL])
        assert len({pid for pid, _ in got}) == len(got)
        assert_quiet(ctx)
    assert _main_thread_mask() == before


# -- 9. marks an interrupted pidfd close left under a pid the kernel reuses ------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", SELECTIVE_MODES, ids=_ids(SELECTIVE_MODES))
def test_stale_close_marks_do_not_outlive_their_pid(mode: SigchldOwner) -> None:
    """``Wakeups.close_pidfd`` drops a pid's fd, identity and "closed by us" mark in
    three steps; an interruption between them leaves marks under a pid the kernel
    may give to a later child. The next pidfd opened for that pid must start clean:
    a stale "closed" mark would leave the new pidfd open for good, a stale identity
    would report it lost (FdLostError)."""
    got: list[int] = []
    with Context(mode) as ctx:
        wakeups = ctx._kids.wakeups
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "exit 3"], dict(os.environ))
        # What an interrupted close of an earlier child with this pid would leave.
        wakeups._ids[pid] = (0, 0, 0, 0)
        wakeups._closed[pid] = 12345
        child = ctx.adopt(pid, lambda c, ev: got.append(ev.status))
        pidfd = child.pidfd
        assert pidfd is not None
        while ctx.children:
            ctx.wait(10)
        assert got == [3]
        assert_pidfd_closed(pidfd)
        assert_quiet(ctx)


# -- 10. a KeyboardInterrupt already pending when the SIGCHLD handler runs -------------
@pytest.mark.timeout(120)
def test_interrupt_pending_when_the_sigchld_handler_runs_reaches_the_caller() -> None:
    """CPython 3.10's ``os.fstat`` runs due signal handlers while it builds its result
    (a big-int multiplication checks for signals) and carries on past an exception
    one raised, so with SIGINT and SIGCHLD both due, childproc's handler runs with the
    KeyboardInterrupt pending. It must pass it on: neither clear it (an attribute
    lookup that misses the type cache does) nor turn it into a SystemError. The type
    cache is made to miss on every round by touching the handler's class; every
    KeyboardInterrupt must reach the loop. (3.11+ never run a handler with one
    pending: there it checks the plain path.)"""
    rounds = 1500
    main = threading.main_thread().ident
    assert main is not None
    acked = threading.Semaphore(0)
    go = threading.Event()
    lost: list[int] = []

    def send() -> None:
        go.wait()
        for k in range(rounds):
            signal.pthread_kill(main, signal.SIGINT)
            signal.pthread_kill(main, signal.SIGCHLD)
            if not acked.acquire(timeout=2.0):
                lost.append(k)
                return

    caught = 0
    cls = type(_sigchld.HANDLER)
    with Context(SigchldOwner.LIBXL) as ctx, default_sigint():
        ctx.spawn(["sleep", "60"], kill_on_close=True)
        assert _sigchld.HANDLER.installed
        fd = os.open("/", os.O_RDONLY)
        sender = threading.Thread(target=send, name="test-sigint-sigchld", daemon=True)
        owe = started = False
        try:
            sender.start()
            while True:  # (left by break: see tests/backedges.py)
                try:
                    # Acknowledged first thing in the try (as test_hostile's Interrupter
                    # does): the next SIGINT can only land in here, never in the except.
                    if owe:
                        owe = False
                        acked.release()
                    if caught >= rounds or lost:
                        break
                    if not started:
                        started = True
                        go.set()
                    cls._type_cache_miss = caught  # type: ignore[attr-defined]  # a new type version
                    os.fstat(fd)
                except KeyboardInterrupt:
                    caught += 1
                    owe = True
            if owe:
                acked.release()  # (the last: nothing follows it)
        finally:
            sender.join(10)
            os.close(fd)
            with contextlib.suppress(AttributeError):
                del cls._type_cache_miss  # type: ignore[attr-defined]
    assert not lost, f"KeyboardInterrupt #{lost[0]} never reached the caller ({caught} did)"
    assert caught == rounds


# -- 11. a fork server's exit fd: its close interrupted, and the replay ------------------
@pytest.mark.timeout(60)
def test_ki_right_after_an_exit_fds_close_leaves_no_stale_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interruption right after ``os.close`` of a served child's exit fd returns:
    the fd left the epoll and the served table before the close (while its number
    was ours), so the next child's pidfd at that number is a pidfd, not an exit fd
    (it was read as one: every later wait raised EINVAL and nothing was delivered)."""
    from childproc import _wakeups  # noqa: PLC0415
    from childproc.forkserver import ForkServer  # noqa: PLC0415

    server = ForkServer.start()
    try:
        with Context(SigchldOwner.PIDFD) as ctx:
            served = ctx.watch_served(server.spawn(["/bin/true"]))
            once = Once("right after the exit fd's os.close returned")
            target = served._exit_fd
            fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})

            def close(fd: int) -> None:
                os.close(fd)
                if fd == target:
                    once.fire()

            fake_os.close = close
            monkeypatch.setattr(_wakeups, "os", fake_os)
            with pytest.raises(KeyboardInterrupt):
                while ctx.children:
                    ctx.wait(5)
            monkeypatch.undo()
            assert once.fired
            got: list[int | None] = []
            for _ in range(4):  # one of their pidfds lands on the freed number
                ctx.spawn(["/bin/sh", "-c", "exit 5"], lambda c, ev: got.append(ev.returncode))
            while ctx.children:
                ctx.wait(5)
            assert got == [5, 5, 5, 5]
            assert_quiet(ctx)
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_ki_right_after_remove_served_returns_leaves_the_hosts_fd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An interruption right after ``Wakeups.remove_served`` returned, then the host
    opens a file (it gets the freed number): the replay must not close it (it did:
    the fd's marks were dropped while the child still named the number)."""
    from childproc import _wakeups  # noqa: PLC0415
    from childproc.forkserver import ForkServer  # noqa: PLC0415

    server = ForkServer.start()
    try:
        with Context(SigchldOwner.PIDFD) as ctx:
            ctx.watch_served(server.spawn(["/bin/true"]))
            once = Once("right after Wakeups.remove_served returned")
            after_return(monkeypatch, _wakeups.Wakeups, "remove_served", once)
            with pytest.raises(KeyboardInterrupt):
                while ctx.children:
                    ctx.wait(5)
            monkeypatch.undo()
            with open(tmp_path / "host", "w") as host:
                ctx.spawn(["/bin/true"])
                while ctx.children:
                    ctx.wait(5)
                assert fd_is_open(host.fileno()), "childproc closed the host's file"
            assert_quiet(ctx)
    finally:
        server.stop()


# -- 12. in the handler's release at close() (SigchldHandler.set_user(..., False)) ----
def _ki_at_restore_entry(monkeypatch: pytest.MonkeyPatch, once: Once) -> None:
    original = _sigchld.HANDLER._restore

    def restore() -> None:
        once.fire()  # (a handler run at the function's entry)
        original()

    monkeypatch.setattr(_sigchld.HANDLER, "_restore", restore)


def _ki_after_restoring_swap(monkeypatch: pytest.MonkeyPatch, once: Once) -> None:
    after_return(monkeypatch, _sigchld, "_raw_signal", once, when=lambda sig, handler: handler in (0, 1))


def _ki_after_the_user_left(monkeypatch: pytest.MonkeyPatch, once: Once) -> None:
    """Right after ``set_user`` rebuilt its tuple of pokers without the context's (the
    user gone, the handler not put back yet)."""

    def interrupted_tuple(items: Any) -> tuple[Any, ...]:
        result = tuple(items)
        if not result:
            once.fire()
        return result

    monkeypatch.setattr(_sigchld, "tuple", interrupted_tuple, raising=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", LIBXL_MODES, ids=_ids(LIBXL_MODES))
@pytest.mark.parametrize(
    "inject",
    [_ki_after_the_user_left, _ki_at_restore_entry, _ki_after_restoring_swap],
    ids=["user-left", "restore-entry", "after-swap"],
)
def test_ki_in_the_handlers_release_at_close(
    mode: SigchldOwner,
    inject: Callable[[pytest.MonkeyPatch, Once], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() interrupted after its context stopped being a user of the handler but
    before the handler was put back (the LIBXL modes: the pidfd modes use the handler
    only without pidfds) (CI caught it once: the handler stayed installed
    with no user, and every later test saw it). close() again, or the next context's
    release, must put SIGCHLD back as it was."""
    once = Once("in the SIGCHLD handler's release")
    ctx = Context(mode)
    try:
        child = ctx.spawn(["sleep", "30"], kill_on_close=True)
        assert _sigchld.HANDLER.installed
        inject(monkeypatch, once)
        with pytest.raises(KeyboardInterrupt, match="simulated"):
            ctx.close()
        assert once.fired
        monkeypatch.undo()
    finally:
        ctx.close()
    assert wait_until(lambda: proc_state(child.pid) is None, 5)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert not _sigchld.HANDLER.installed and _sigchld.HANDLER.user_count == 0
    assert_new_context_works(mode)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def _handler_consistent() -> None:
    """The handler's bookkeeping says what SIGCHLD really is."""
    handler = _sigchld.HANDLER
    assert handler.is_ours(signal.getsignal(signal.SIGCHLD)) == handler.installed
    assert len(handler._pokers) == handler.user_count
    assert handler.installed == (handler.user_count > 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", LIBXL_MODES, ids=_ids(LIBXL_MODES))
def test_ki_while_the_first_install_learns_the_trampoline(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first install in a process reads back CPython's C-level handler address
    after the swap; interrupted there, the swap must be recorded, so that the undo
    puts SIGCHLD back (it left childproc's handler there, with nobody using it)."""
    once = Once("while _install learns the trampoline")
    real = _sigchld.disposition

    def disposition() -> Any:
        if sys._getframe(1).f_code.co_name == "_install":
            once.fire()
        return real()

    monkeypatch.setattr(_sigchld.HANDLER, "_trampoline", None)
    monkeypatch.setattr(_sigchld, "disposition", disposition)
    with Context() as ctx:
        with pytest.raises(KeyboardInterrupt, match="simulated"):
            ctx.setmode(Hooks(chldowner=mode))  # (LIBXL_ALWAYS installs here)
            ctx.spawn(["/bin/true"])  # (LIBXL here)
        assert once.fired
        _handler_consistent()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert ctx.children == frozenset()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert_new_context_works(mode)
    _handler_consistent()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", LIBXL_MODES, ids=_ids(LIBXL_MODES))
def test_ki_right_after_a_user_is_added(mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interruption right after ``set_user`` added the context to the users (the
    pokers not rebuilt, the handler not installed): the add is undone, so that the
    next start installs the handler (it ran without, and nothing repaired it)."""
    once = Once("right after a user was added")

    def interrupted_tuple(items: Any) -> tuple[Any, ...]:
        result = tuple(items)
        if result:
            once.fire()
        return result

    ctx = Context()
    try:
        monkeypatch.setattr(_sigchld, "tuple", interrupted_tuple, raising=False)
        with pytest.raises(KeyboardInterrupt, match="simulated"):
            ctx.setmode(Hooks(chldowner=mode))
            ctx.spawn(["/bin/true"])
        monkeypatch.undo()
        assert once.fired
        _handler_consistent()
        if mode is SigchldOwner.LIBXL_ALWAYS:
            ctx.setmode(Hooks(chldowner=mode))
        got: list[int | None] = []
        ctx.spawn(["/bin/sh", "-c", "exit 3"], lambda c, ev: got.append(ev.returncode))
        assert _sigchld.HANDLER.installed and _sigchld.HANDLER.is_ours(signal.getsignal(signal.SIGCHLD))
        _handler_consistent()
        assert ctx.wait(10) == 1 and got == [3]
    finally:
        ctx.close()
    _handler_consistent()
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", LIBXL_MODES, ids=_ids(LIBXL_MODES))
def test_ki_in_the_constructors_setmode_closes_the_context(
    mode: SigchldOwner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Context(mode)`` interrupted right after its setmode: the half-made context
    is closed (nobody holds it to close it: it stayed registered, with its fds open
    and, in LIBXL_ALWAYS, the SIGCHLD handler in place). A setmode that refuses (a
    foreign handler, an ignored SIGCHLD) goes the same way."""
    once = Once("in Context()'s setmode")
    after_return(monkeypatch, Context, "setmode", once)
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        Context(mode)
    monkeypatch.undo()
    assert once.fired
    assert not [c for c in _process.live_contexts() if not c.closed]
    _handler_consistent()
    assert_new_context_works(mode)


# -- 13. a spawn or fork cut short after its child was made ----------------------------
def _collect(ctx: Context) -> None:
    """``ctx.wait`` until every child registered is delivered (10 s at most)."""
    for _ in range(100):
        if not ctx.children:
            return
        ctx.wait(0.1)
    assert not ctx.children, f"still outstanding: {ctx.children}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "where",
    [
        "register",  # right after the child is registered (no tree)
        "cgroup",  # right after the parent put it in its tree (the trial's real SIGINTs landed there)
        "pipes",  # right after the parent closed the child's pipe ends
    ],
)
def test_an_interrupted_spawn_kills_the_child_it_made(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gets the KeyboardInterrupt and no handle: the child (its tree) is
    SIGKILLed, its exit delivered once to ``on_event``, and ``close()`` has nothing
    left to leave behind (a new user's trial saw the tree outlive the program)."""
    once = Once(where)
    kwargs: dict[str, Any] = {}
    if where == "register":
        after_return(monkeypatch, _children.Children, "register_locked", once)
    elif where == "cgroup":
        after_return(monkeypatch, _trees.TreePlan, "in_parent", once)
        kwargs["kill_tree"] = True
    else:
        after_return(monkeypatch, _stdio.Pipes, "close_child_ends", once)
        kwargs["stdout"] = PIPE
    report = tmp_path / "pid"
    got: list[ChildEvent] = []
    with Context(SigchldOwner.SELECTIVE_REAP) as ctx:
        with pytest.raises(KeyboardInterrupt):
            ctx.spawn(
                ["sh", "-c", f'sleep 60 & echo $! > "{report}"; wait'],
                lambda c, ev: got.append(ev),
                **kwargs,
            )
        assert once.fired
        (pid,) = ctx.children
        _collect(ctx)
    assert [ev.returncode for ev in got] == [-signal.SIGKILL]
    assert wait_until(lambda: proc_state(pid) is None, 5)
    if where == "cgroup" and report.exists() and report.read_text().strip():
        grandchild = int(report.read_text())
        assert wait_until(lambda: proc_state(grandchild) in (None, "Z"), 5), "the tree outlived the spawn"


@pytest.mark.timeout(30)
def test_a_fork_interrupted_while_it_waits_for_the_childs_session_kills_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fork(start_new_session=True)`` waits for the child's ``setsid()``; interrupted
    there, it kills the child rather than leave it running without a handle."""

    def interrupted(gate: int, pid: int) -> None:
        raise KeyboardInterrupt("simulated: waiting for the forked child's session")

    monkeypatch.setattr(_starter, "_await_session", interrupted)
    got: list[ChildEvent] = []
    parent = os.getpid()
    with Context(SigchldOwner.SELECTIVE_REAP) as ctx:
        with pytest.raises(KeyboardInterrupt):
            child = ctx.fork(lambda c, ev: got.append(ev), start_new_session=True)
            if child is None:  # the forked child: waits to be killed
                try:
                    signal.pause()
                finally:
                    os._exit(0)
        assert os.getpid() == parent
        (pid,) = ctx.children
        _collect(ctx)
    assert [ev.returncode for ev in got] == [-signal.SIGKILL]
    assert wait_until(lambda: proc_state(pid) is None, 5)
