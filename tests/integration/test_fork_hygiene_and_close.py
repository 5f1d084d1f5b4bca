"""A forked child starts clean; close() leaves no zombie, fd or handler behind."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from childproc import (
    ClosedError,
    Context,
    ForkedContextError,
    Hooks,
    SigchldOwner,
    _process,
    _sigchld,
    postfork_child_noexec,
)

from .kids import Record, child_pause, drain, fork, fork_exit
from .procutil import children, is_zombie, open_fds, wait_until

_libc = ctypes.CDLL(None, use_errno=True)


def libc_fork(user: object = None) -> int:
    """fork() behind Python's back: no at-fork hooks run in the child."""
    pid = int(_libc.fork())
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def inspect_in_child(ctx: Context, fds: list[int], report_w: int) -> None:
    """Runs in the child: write what it sees as JSON, then exit."""
    info: dict[str, object] = {}
    try:
        info["sigchld"] = repr(signal.getsignal(signal.SIGCHLD))
        try:
            ctx.dispatch()
            info["dispatch"] = "worked"
        except ForkedContextError as e:
            info["dispatch"] = f"ForkedContextError: {e}"
        info["open"] = [fd for fd in fds if _is_open(fd)]
        info["snapshot"] = _process.snapshot()
        info["new_ctx_works"] = _new_context_works()
    except BaseException as e:  # report, never escape into the test runner
        info["error"] = repr(e)
    os.write(report_w, json.dumps(info).encode())
    os._exit(0)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _new_context_works() -> bool:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as c:
        pid = fork_exit(c, rec, 5)
        drain(c, lambda: pid in rec.calls, timeout=10)
    return rec.code(pid) == 5


def run_child_check(ctx: Context, start_child: Callable[[Callable[[], None]], int]) -> dict[str, object]:
    pidfds = [ctx.child(pid).pidfd for pid in ctx.children]
    fds = [
        ctx.fileno(),
        ctx._kids.wakeups.waker.rfd,
        ctx._kids.wakeups.waker.wfd,
        *(fd for fd in pidfds if fd is not None),
    ]
    assert len(fds) > 3
    r, w = os.pipe()
    try:
        pid = start_child(lambda: inspect_in_child(ctx, fds, w))
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    info: dict[str, object] = json.loads(data)
    info["pid"] = pid
    return info


def assert_clean(info: dict[str, object]) -> None:
    assert "error" not in info, info
    assert info["sigchld"] == repr(signal.Handlers.SIG_DFL)
    assert str(info["dispatch"]).startswith("ForkedContextError"), info
    assert info["open"] == []
    snap = info["snapshot"]
    assert isinstance(snap, dict)
    assert snap["handler_installed"] is False and snap["owned_pids"] == 0 and snap["handler_users"] == 0
    assert info["new_ctx_works"] is True


@pytest.mark.parametrize("how", ["child_fork", "os.fork", "child_fork+libc_fork", "libc_fork+postfork"])
def test_forked_child_starts_clean(how: str) -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))  # a handler to clean up
        keeper = fork(ctx, rec, child_pause)  # so a pidfd is open too
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)

        def start(body: Callable[[], None]) -> int:
            if how in ("child_fork", "child_fork+libc_fork"):
                if how == "child_fork+libc_fork":
                    # A fork_replacement that bypasses os.fork's at-fork hooks:
                    # child_fork must still clean the child itself.
                    other = Context(SigchldOwner.LIBXL)
                    other.setmode(Hooks(chldowner=SigchldOwner.LIBXL, fork_replacement=libc_fork))
                    holder.append(other)
                    pid = other.child_fork(rec)
                else:
                    pid = ctx.child_fork(rec)
                if pid == 0:
                    body()
                return pid
            if how == "os.fork":
                pid = os.fork()
            else:
                pid = libc_fork()
                if pid == 0:
                    postfork_child_noexec()
            if pid == 0:
                body()
            return pid

        holder: list[Context] = []
        info = run_child_check(ctx, start)
        assert_clean(info)
        child = info["pid"]
        assert isinstance(child, int)
        if how in ("os.fork", "libc_fork+postfork"):
            os.waitpid(child, 0)
        else:
            owner = holder[0] if holder else ctx
            drain(owner, lambda: child in rec.calls)
        for other in holder:
            other.close()
        os.kill(keeper, signal.SIGKILL)
        drain(ctx, lambda: keeper in rec.calls)


# -- close ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode", [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.SELECTIVE_REAP], ids=lambda m: m.name
)
def test_close_reaps_exited_children_and_leaves_nothing(mode: SigchldOwner) -> None:
    before = open_fds()
    rec = Record()
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=mode))
    pids = [fork_exit(ctx, rec, 1) for _ in range(10)]
    assert wait_until(lambda: all(is_zombie(p) for p in pids))
    ctx.close()
    assert not rec.calls  # close() drops undelivered callbacks
    assert children() == {}  # no zombie of ours
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    del ctx
    assert open_fds() == before


def test_close_leaves_live_children_running_and_reaps_them_later() -> None:
    rec = Record()
    ctx = Context(SigchldOwner.LIBXL)
    pid = fork(ctx, rec, child_pause)
    with pytest.warns(ResourceWarning, match=str(pid)) as record:
        ctx.close()
    assert {w.filename for w in record} == {__file__}  # (the close() here)
    assert ctx.children == frozenset()
    assert set(children()) == {pid} and not is_zombie(pid)  # still running
    assert _process.snapshot()["owned_pids"] == 0
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: pid not in children(), timeout=5)  # the orphanage reaped it
    assert not rec.calls


def test_close_in_mainloop_does_not_reap() -> None:
    rec = Record()
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
    pid = fork_exit(ctx, rec, 2)
    assert wait_until(lambda: is_zombie(pid))
    ctx.close()
    assert is_zombie(pid)  # the application reaps in MAINLOOP
    os.waitpid(pid, 0)


def test_close_from_another_thread_wakes_waiters() -> None:
    ctx = Context(SigchldOwner.LIBXL)
    ctx.spawn(["sleep", "30"], kill_on_close=True)  # something outstanding: wait() blocks
    outcome: list[str] = []

    def waiter() -> None:
        try:
            ctx.wait()
            outcome.append("returned")
        except ClosedError:
            outcome.append("ClosedError")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    ctx.close()
    t.join(10)
    assert outcome == ["ClosedError"]


@pytest.mark.parametrize(
    "mode", [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.SELECTIVE_REAP], ids=lambda m: m.name
)
def test_fileno_becomes_readable_on_child_exit(mode: SigchldOwner) -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=mode))
        assert select.select([ctx], [], [], 0)[0] == []
        pid = fork_exit(ctx, rec, 8)
        r, _, _ = select.select([ctx.fileno()], [], [], 10)
        assert r == [ctx.fileno()]
        while pid not in rec.calls:
            ctx.dispatch()
            select.select([ctx], [], [], 1)
        assert rec.code(pid) == 8
        assert select.select([ctx], [], [], 0)[0] == []  # nothing left to do


def test_full_lifecycle_leaks_no_fds() -> None:
    before = open_fds()
    for mode in SigchldOwner:
        rec = Record()
        with Context(SigchldOwner.LIBXL) as ctx:
            ctx.setmode(Hooks(chldowner=mode))
            pids = [fork_exit(ctx, rec, 3) for _ in range(20)]
            if mode is SigchldOwner.MAINLOOP:
                for pid in pids:
                    _, status = os.waitpid(pid, 0)
                    ctx.childproc_reaped(pid, status)
            else:
                pending = set(pids)
                drain(ctx, lambda pending=pending, rec=rec: pending <= rec.calls.keys())  # type: ignore[misc]
    assert open_fds() == before


def test_restoring_a_saved_default_given_as_the_signal_module_enum() -> None:
    # The saved disposition may be signal.SIG_DFL (a signal.Handlers member, as
    # signal.getsignal returns it); the restore must hand _signal.signal a plain int.
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))
        assert _sigchld.HANDLER.is_ours(signal.getsignal(signal.SIGCHLD))
        _sigchld.HANDLER.saved = signal.SIG_DFL
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert not _process.snapshot()["handler_installed"]


_PIDFD_MODES = [
    SigchldOwner.SELECTIVE_REAP,
    SigchldOwner.PIDFD,
    SigchldOwner.LIBXL,
    SigchldOwner.LIBXL_ALWAYS,
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", _PIDFD_MODES)
def test_a_delivered_childs_pidfd_leaves_the_epoll_when_its_callback_spawns(mode: SigchldOwner) -> None:
    """A callback that starts the next child (a job runner's way): that child holds
    copies of the parent's fds until its exec has closed them, which may be after
    ``posix_spawn`` returned. The delivered child's pidfd, closed meanwhile, must
    not stay in the context's epoll through that copy: it was readable there, and a
    loop polling ``fileno()`` spun until the exec was over (about 10 turns per
    child under Twisted's reactor). It is unregistered before it is closed."""
    with Context(mode=mode) as ctx:
        left = [12]
        spurious: list[int] = []

        def next_one(child: Any, event: Any) -> None:
            left[0] -= 1
            if left[0] > 0:
                ctx.spawn(["/bin/sleep", "0.05"], next_one)

        ctx.spawn(["/bin/sleep", "0.05"], next_one)
        while left[0] > 0:
            if ctx.wait(5):  # delivered: the next child runs (and sleeps) now
                ready, _, _ = select.select([ctx.fileno()], [], [], 0)
                if ready and left[0] > 0:
                    spurious.append(left[0])
        assert spurious == [], f"the context's fd was readable with nothing due after {len(spurious)} of 11"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD])
def test_an_adopted_childs_pidfd_copy_leaves_the_epoll_though_the_adopter_keeps_its_own(
    mode: SigchldOwner,
) -> None:
    """``adopt(pidfd=..., own_pidfd=False)``: childproc watches a copy and the caller
    keeps the original, so the file outlives childproc's close. Delivered, the copy is
    taken out of the epoll first: the context's fd does not stay readable (it did,
    for as long as the caller kept its pidfd: some 40,000 turns in 0.3 s)."""
    with Context(mode=mode) as ctx:
        pid = os.posix_spawn("/bin/sleep", ["sleep", "0.05"], os.environ)
        mine = os.pidfd_open(pid)
        try:
            child = ctx.adopt(pidfd=mine, own_pidfd=False)
            while child.returncode is None:
                ctx.wait(5)
            ready, _, _ = select.select([ctx.fileno()], [], [], 0.05)
            assert ready == [], "the context's fd stays readable with nothing to deliver"
        finally:
            os.close(mine)
