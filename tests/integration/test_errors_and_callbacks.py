"""Misuse gets a clear error; callbacks that raise or re-enter lose nothing."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import pytest

import childproc
from childproc import (
    ChildprocError,
    ChildStolenError,
    ClosedError,
    Context,
    ForkError,
    HandlerReplacedError,
    Hooks,
    InvalidArgumentError,
    SigchldConflictError,
    SigchldOwner,
    StateError,
    _process,
    _sigchld,
)
from childproc._watchers import pidfd as pidfd_mod

from .kids import Record, child_pause, drain, fork, fork_exit
from .procutil import is_zombie, wait_until


def host_handler(signum: int, frame: object) -> None:
    pass


# -- bad input ------------------------------------------------------------------
def test_bad_arguments_raise_invalid_argument() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        with pytest.raises(InvalidArgumentError, match="callable"):
            ctx.child_fork("not a function")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="Hooks"):
            ctx.setmode("MAINLOOP")  # type: ignore[arg-type]
        for bad in (-1, -0.5, float("nan"), True, False, "1", b"1", [1], Decimal(1)):
            with pytest.raises(InvalidArgumentError, match="timeout"):
                ctx.wait(bad)  # type: ignore[arg-type]
        assert ctx.wait(0) == 0 and ctx.wait(0.0) == 0 and ctx.wait(Fraction(1, 1000)) == 0  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="events"):
            ctx.fork(events=os.WSTOPPED)  # the exit is always reported
        with pytest.raises(InvalidArgumentError, match="events"):
            ctx.spawn(["true"], events=True)
        with pytest.raises(InvalidArgumentError, match="SigchldOwner"):
            Hooks(chldowner="mainloop")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="only used in LIBXL"):
            Hooks(chldowner=SigchldOwner.SELECTIVE_REAP, reaped_callback=lambda p, s, u: True)
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        with pytest.raises(InvalidArgumentError, match="pid"):
            ctx.childproc_reaped(0, 0)
        with pytest.raises(InvalidArgumentError, match="status"):
            ctx.childproc_reaped(123, 1 << 20)
    assert issubclass(InvalidArgumentError, ValueError)


def test_wrong_mode_calls_raise_state_error() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        with pytest.raises(StateError, match=r"only for SigchldOwner\.MAINLOOP"):
            ctx.childproc_reaped(12345, 0)
        with pytest.raises(StateError, match=r"only for SigchldOwner\.MAINLOOP"):
            ctx.sigchld_occurred()


def test_setmode_with_children_outstanding() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        pid = fork_exit(ctx, rec, 0)
        with pytest.raises(StateError, match="children outstanding"):
            ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        drain(ctx, lambda: pid in rec.calls)
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))  # fine once delivered


def test_closed_context_raises() -> None:
    ctx = Context(SigchldOwner.LIBXL)
    ctx.close()
    ctx.close()  # idempotent
    for call in (ctx.dispatch, ctx.fileno, lambda: ctx.child_fork(print), lambda: ctx.wait(0), ctx.setmode):
        with pytest.raises(ClosedError, match="closed"):
            call()
    assert issubclass(ClosedError, ChildprocError)


# -- SIGCHLD conflicts ------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "pidfds"),
    [(SigchldOwner.LIBXL_ALWAYS, True), (SigchldOwner.SELECTIVE_REAP, False)],
    ids=["LIBXL_ALWAYS", "SELECTIVE_REAP-without-pidfds"],
)
def test_foreign_handler_refused_at_setmode(
    mode: SigchldOwner, pidfds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        with Context(SigchldOwner.LIBXL) as ctx:
            with pytest.raises(SigchldConflictError, match="host_handler") as info:
                ctx.setmode(Hooks(chldowner=mode))
            assert "MAINLOOP" in str(info.value)
            assert info.value.handler is host_handler
            assert ctx.mode is SigchldOwner.LIBXL  # unchanged
            assert signal.getsignal(signal.SIGCHLD) is host_handler
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def test_foreign_handler_refused_before_fork_in_libxl_mode() -> None:
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        with Context(SigchldOwner.LIBXL) as ctx:
            with pytest.raises(SigchldConflictError):
                ctx.child_fork(print)  # no child may be forked: nobody would see it die
            assert ctx.children == frozenset()
            ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))  # the way out works
            rec = Record()
            pid = fork_exit(ctx, rec, 3)
            _, status = os.waitpid(pid, 0)
            assert ctx.childproc_reaped(pid, status)
            assert signal.getsignal(signal.SIGCHLD) is host_handler
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.mark.parametrize("mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD], ids=lambda m: m.name)
def test_pidfd_modes_live_beside_a_host_sigchld_handler(mode: SigchldOwner) -> None:
    """With pidfds, SELECTIVE_REAP and PIDFD need no handler: a host's own handler
    stays in place, untouched, and both sides see their own children."""
    calls: list[int] = []

    def host(signum: int, frame: object) -> None:
        calls.append(signum)

    signal.signal(signal.SIGCHLD, host)
    try:
        rec = Record()
        with Context(SigchldOwner.LIBXL) as ctx:
            ctx.setmode(Hooks(chldowner=mode))
            mine = fork_exit(ctx, rec, 12)
            theirs = os.fork()
            if theirs == 0:
                os._exit(13)
            drain(ctx, lambda: mine in rec.calls)
            _, status = os.waitpid(theirs, 0)
            assert rec.code(mine) == 12 and os.waitstatus_to_exitcode(status) == 13
            assert signal.getsignal(signal.SIGCHLD) is host
        assert calls  # the host's handler kept running
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def test_handler_replaced_behind_our_back_is_reported_not_hung() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))
        pid = fork(ctx, rec, child_pause)
        signal.signal(signal.SIGCHLD, host_handler)
        try:
            with pytest.raises(HandlerReplacedError, match="host_handler"):
                ctx.wait(5)
            with pytest.raises(SigchldConflictError):
                ctx.child_fork(rec)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            ctx.close()


def test_reentry_from_a_signal_handler_is_refused() -> None:
    """A host handler that calls childproc_reaped while childproc holds its lock on the
    same thread (it interrupted a childproc call) gets an error, not a deadlock."""
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        with _process.LOCK, pytest.raises(StateError, match="signal handler"):
            ctx.childproc_reaped(12345, 0)


# -- fork failure ----------------------------------------------------------------
@pytest.mark.parametrize("mode", list(SigchldOwner), ids=lambda m: m.name)
def test_fork_failure_leaves_nothing_behind(mode: SigchldOwner) -> None:
    def failing_fork(user: object) -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=mode, fork_replacement=failing_fork))
        before = signal.getsignal(signal.SIGCHLD)
        with pytest.raises(ForkError) as info:
            ctx.child_fork(print)
        assert info.value.errno == errno.EAGAIN
        assert isinstance(info.value, OSError)
        assert ctx.children == frozenset()
        assert _process.snapshot()["owned_pids"] == 0
        assert signal.getsignal(signal.SIGCHLD) == before  # LIBXL: none installed for nothing
        if mode is SigchldOwner.LIBXL:
            assert before == signal.SIG_DFL


def test_fork_replacement_is_used_and_sees_user() -> None:
    calls: list[object] = []

    def my_fork(user: object) -> int:
        calls.append(user)
        return os.fork()

    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL, fork_replacement=my_fork), user="token")
        pid = fork_exit(ctx, rec, 6)
        drain(ctx, lambda: pid in rec.calls)
    assert calls == ["token"] and rec.code(pid) == 6


REENTRIES: dict[str, Callable[[Context], object]] = {
    "child_fork": lambda ctx: ctx.child_fork(print),
    "spawn": lambda ctx: ctx.spawn(["/bin/true"]),
    "dispatch": lambda ctx: ctx.dispatch(),
    "wait": lambda ctx: ctx.wait(0),
    "children": lambda ctx: ctx.children,
    "child": lambda ctx: ctx.child(1),
    "close": lambda ctx: ctx.close(),
}


@pytest.mark.parametrize("call", list(REENTRIES))
def test_fork_replacement_must_not_reenter(call: str) -> None:
    """Every entry point refuses a call from the thread that holds the process lock."""
    holder: list[Context] = []

    def bad_fork(user: object) -> int:
        REENTRIES[call](holder[0])
        raise AssertionError("re-entry was not refused")

    with Context(SigchldOwner.LIBXL) as ctx:
        holder.append(ctx)
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL, fork_replacement=bad_fork))
        with pytest.raises(StateError, match="re-entered"):
            ctx.child_fork(print)
        assert ctx.children == frozenset()


def test_fork_replacement_returning_garbage() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL, fork_replacement=lambda user: -1))
        with pytest.raises(InvalidArgumentError, match="fork_replacement"):
            ctx.child_fork(print)
        assert ctx.children == frozenset()


# -- callbacks ---------------------------------------------------------------------
def test_raising_callback_loses_nothing_and_delivers_once() -> None:
    seen: list[int] = []

    def cb(pid: int, status: int) -> None:
        seen.append(pid)
        raise RuntimeError(f"boom {pid}")

    with Context(SigchldOwner.LIBXL) as ctx:
        pids = [fork_exit(ctx, cb, 1) for _ in range(5)]
        raised = 0
        while len(seen) < 5:
            r, _, _ = select.select([ctx], [], [], 10)
            assert r, "fileno() must stay readable while events are queued"
            try:
                ctx.dispatch()
            except RuntimeError as e:
                assert str(e).startswith("boom")
                raised += 1
        assert sorted(seen) == sorted(pids) and raised == 5
        assert ctx.dispatch() == 0


def test_callback_may_fork_again_and_close() -> None:
    rec = Record()
    chain: list[int] = []
    with Context(SigchldOwner.LIBXL) as ctx:

        def again(pid: int, status: int) -> None:
            chain.append(pid)
            if len(chain) < 5:
                fork_exit(ctx, again, len(chain))

        fork_exit(ctx, again, 0)
        drain(ctx, lambda: len(chain) == 5)

        def closer(pid: int, status: int) -> None:
            rec(pid, status)
            ctx.close()

        p1 = fork_exit(ctx, closer, 0)
        p2 = fork_exit(ctx, closer, 0)
        assert wait_until(lambda: is_zombie(p1) and is_zombie(p2))
        drain_until_closed(ctx)
        # Exactly one callback ran; the other child was reaped by close() (no zombie).
        assert len(rec.calls) == 1 and set(rec.calls) <= {p1, p2}


def drain_until_closed(ctx: Context) -> None:
    deadline = time.monotonic() + 20
    while not ctx.closed and time.monotonic() < deadline:
        try:
            ctx.wait(1)
        except ClosedError:
            break


def test_stolen_child_is_reported_loudly() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
        pid = fork_exit(ctx, print, 3)
        os.waitpid(pid, 0)  # someone breaks the contract
        with pytest.raises(ChildStolenError) as info:
            for _ in range(100):
                ctx.wait(1)
        assert info.value.pid == pid
        assert ctx.children == frozenset()


def test_errors_form_one_hierarchy() -> None:
    for name in childproc.__all__:
        obj = getattr(childproc, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, ChildprocError), name


def test_dispatch_thread_logs_callback_errors(caplog: pytest.LogCaptureFixture) -> None:
    rec = Record()
    done = threading.Event()
    bad_ran = threading.Event()

    def bad(pid: int, status: int) -> None:
        bad_ran.set()
        raise ValueError("bad callback")

    def good(pid: int, status: int) -> None:
        rec(pid, status)
        done.set()

    with Context(SigchldOwner.LIBXL) as ctx:
        t = ctx.start_dispatch_thread()
        with pytest.raises(StateError):
            ctx.start_dispatch_thread()
        fork_exit(ctx, bad, 1)
        fork_exit(ctx, good, 2)
        assert done.wait(20) and bad_ran.wait(20)
    assert not t.is_alive()
    assert any("raised on the dispatch thread" in r.message for r in caplog.records)


def test_replaced_handler_conflict_stays_with_the_contexts_that_need_it() -> None:
    """After a replacement, every call of a context that needs the handler keeps
    raising (not just once); contexts that do not need it are unaffected; once the
    foreign handler goes, the next main-thread call installs childproc's again."""
    always = Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS)
    with Context(SigchldOwner.LIBXL) as a, Context(SigchldOwner.LIBXL) as m:
        a.setmode(always)
        m.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        signal.signal(signal.SIGCHLD, host_handler)
        try:
            with pytest.raises(HandlerReplacedError):
                a.dispatch()
            assert m.sigchld_occurred() == 0  # MAINLOOP does not care
            assert m.dispatch() == 0
            for _ in range(3):
                with pytest.raises(SigchldConflictError, match="host_handler"):
                    a.dispatch()
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        assert a.dispatch() == 0  # the foreign handler is gone: ours goes back in
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_close_never_raises_and_releases_fds_after_a_replacement() -> None:
    always = Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS)
    a, b = Context(SigchldOwner.LIBXL), Context(SigchldOwner.LIBXL)
    a.setmode(always)
    b.setmode(always)
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        with pytest.raises(HandlerReplacedError):
            a.dispatch()
        a.close()  # must not raise although b still wants a handler it cannot have
        assert a.closed
        b.close()
        assert signal.getsignal(signal.SIGCHLD) is host_handler  # never clobbered
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    assert _process.snapshot()["handler_users"] == 0


def test_a_raise_from_dispatch_does_not_swallow_the_wakeup(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without pidfds the self-pipe is the only wake-up: a drained poke would be lost.
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))
        pid = fork_exit(ctx, rec, 4)
        assert wait_until(lambda: is_zombie(pid))
        assert select.select([ctx], [], [], 5)[0]
        signal.signal(signal.SIGCHLD, host_handler)
        try:
            with pytest.raises(HandlerReplacedError):
                ctx.dispatch()
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        assert select.select([ctx], [], [], 0)[0], "the pending wake-up must survive the raise"
        drain(ctx, lambda: pid in rec.calls)
        assert rec.code(pid) == 4


def _install_c_handler() -> None:
    """A C-level SIGCHLD handler that Python does not know about (libc's getpid:
    harmless as a handler), as libuv or another C extension would install."""
    libc = ctypes.CDLL(None, use_errno=True)
    act = _sigchld._SigAction()
    act.sa_handler = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert libc.sigaction(signal.SIGCHLD, ctypes.byref(act), None) == 0


def test_c_level_handler_is_seen_and_never_clobbered() -> None:
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    _install_c_handler()
    try:
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # Python cannot see it
        with Context(SigchldOwner.LIBXL) as ctx:
            with pytest.raises(SigchldConflictError, match="outside Python"):
                ctx.child_fork(print)
            assert ctx.children == frozenset()
            ctx.setmode(Hooks(chldowner=SigchldOwner.PIDFD))  # the signal-free way works
            rec = Record()
            pid = fork_exit(ctx, rec, 5)
            drain(ctx, lambda: pid in rec.calls)
            assert rec.code(pid) == 5
        assert _sigchld.disposition().address not in (0, 1, None)  # still the C handler
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def test_c_level_replacement_is_detected() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))
        _install_c_handler()  # C code takes SIGCHLD over behind everybody's back
        try:
            with pytest.raises(HandlerReplacedError, match="outside Python"):
                ctx.dispatch()
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
