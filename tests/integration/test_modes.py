"""Each mode's contract, on real children and real signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import childproc
from childproc import Context, Hooks, SigchldOwner
from childproc._watchers import pidfd as pidfd_mod

from .kids import Record, child_pause, drain, fork, fork_exit, plain_fork_exit
from .procutil import is_zombie, wait_until

PY_EXIT = "import sys; sys.exit(int(sys.argv[1]))"


def ours_installed() -> bool:
    return signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN, None)


# -- LIBXL ------------------------------------------------------------------
def test_libxl_delivers_exit_codes_and_signals_exactly_once() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        assert ctx.mode is SigchldOwner.LIBXL
        a = fork_exit(ctx, rec, 0)
        b = fork_exit(ctx, rec, 3)
        c = fork(ctx, rec, child_pause)
        assert ctx.children == {a, b, c}
        os.kill(c, signal.SIGKILL)
        drain(ctx, lambda: len(rec.calls) == 3)
        assert rec.code(a) == 0
        assert rec.code(b) == 3
        assert rec.code(c) == -signal.SIGKILL
        assert not rec.duplicates()
        assert ctx.children == frozenset()
        assert ctx.dispatch() == 0


def test_libxl_handler_only_while_children() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        assert not ours_installed()
        pid = fork(ctx, rec, child_pause)
        assert ours_installed()
        os.kill(pid, signal.SIGTERM)
        drain(ctx, lambda: pid in rec.calls)
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_libxl_restores_sig_ign() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        rec = Record()
        with Context(SigchldOwner.LIBXL) as ctx:
            pid = fork_exit(ctx, rec, 5)
            assert ours_installed()
            drain(ctx, lambda: pid in rec.calls)
            assert rec.code(pid) == 5  # SIG_IGN would have auto-reaped it: ours was in place
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def test_libxl_reaps_foreign_child_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    rec = Record()
    caplog.set_level(logging.WARNING, logger="childproc")
    with Context(SigchldOwner.LIBXL) as ctx:
        mine = fork(ctx, rec, child_pause)
        foreign = plain_fork_exit(7)
        assert wait_until(lambda: is_zombie(foreign))
        os.kill(mine, signal.SIGTERM)
        drain(ctx, lambda: mine in rec.calls and any(str(foreign) in m for m in caplog.messages))
    msg = next(m for m in caplog.messages if str(foreign) in m)
    assert "unknown child" in msg and "exited with status 7" in msg


def test_libxl_reaped_callback_recognises_or_denies(caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[int, int] = {}
    caplog.set_level(logging.WARNING, logger="childproc")

    def reaped(pid: int, status: int, user: object) -> bool:
        assert user == "me"
        seen[pid] = status
        return pid != denied

    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL, reaped_callback=reaped), user="me")
        keeper = fork(ctx, rec, child_pause)  # keeps the handler installed
        known = plain_fork_exit(11)
        denied = plain_fork_exit(12)
        drain(ctx, lambda: known in seen and denied in seen)
        os.kill(keeper, signal.SIGKILL)
        drain(ctx, lambda: keeper in rec.calls)
    assert os.waitstatus_to_exitcode(seen[known]) == 11
    assert os.waitstatus_to_exitcode(seen[denied]) == 12
    warned = [m for m in caplog.messages if "unknown child" in m]
    assert len(warned) == 1 and str(denied) in warned[0]


# -- LIBXL_ALWAYS -------------------------------------------------------------
def test_libxl_always_handler_from_setmode_and_reaps_app_children() -> None:
    got: dict[int, int] = {}

    def reaped(pid: int, status: int, user: object) -> None:
        got[pid] = status

    ctx = Context(SigchldOwner.LIBXL)
    try:
        assert not ours_installed()
        ctx.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS, reaped_callback=reaped))
        assert ours_installed()  # with no child at all
        app_child = plain_fork_exit(21)
        rec = Record()
        mine = fork_exit(ctx, rec, 22)
        drain(ctx, lambda: app_child in got and mine in rec.calls)
        assert os.waitstatus_to_exitcode(got[app_child]) == 21
        assert rec.code(mine) == 22
        assert ours_installed()  # still: ALWAYS
    finally:
        ctx.close()
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


# -- MAINLOOP -----------------------------------------------------------------
def test_mainloop_never_touches_sigchld_and_reports() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        mine = fork_exit(ctx, rec, 31)
        theirs = plain_fork_exit(32)
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        results = {}
        for _ in range(2):
            pid, status = os.waitpid(-1, 0)
            results[pid] = (ctx.childproc_reaped(pid, status), status)
        assert results[mine][0] is True
        assert results[theirs][0] is False
        assert rec.code(mine) == 31  # delivered from childproc_reaped itself
        assert os.waitstatus_to_exitcode(results[theirs][1]) == 32
        assert ctx.dispatch() == 0


def test_mainloop_sigchld_occurred_reaps_only_ours() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        proc = subprocess.Popen([sys.executable, "-c", PY_EXIT, "41"])
        mine = fork_exit(ctx, rec, 42)
        deadline = time.monotonic() + 10
        while mine not in rec.calls:
            assert time.monotonic() < deadline, "the child's exit was never delivered"
            ctx.sigchld_occurred()
            time.sleep(0.001)
        assert rec.code(mine) == 42
        assert proc.wait(20) == 41


def test_mainloop_two_contexts_answer_for_their_own() -> None:
    r1, r2 = Record(), Record()
    with Context(SigchldOwner.LIBXL) as c1, Context(SigchldOwner.LIBXL) as c2:
        for c in (c1, c2):
            c.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        p1 = fork_exit(c1, r1, 1)
        p2 = fork_exit(c2, r2, 2)
        for _ in range(2):
            pid, status = os.waitpid(-1, 0)
            assert c1.childproc_reaped(pid, status) or c2.childproc_reaped(pid, status)
        assert r1.code(p1) == 1 and r2.code(p2) == 2


# -- SELECTIVE_REAP -----------------------------------------------------------
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "scan-fallback"])
def test_selective_reap_leaves_popen_children_alone(pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
        assert ctx.watcher == ("PIDFD" if pidfds else "SCAN")
        # With pidfds no SIGCHLD handler is needed at all; without, the scan needs one.
        assert ours_installed() is not pidfds
        procs = [subprocess.Popen([sys.executable, "-c", PY_EXIT, str(code)]) for code in (51, 52, 53)]
        mine = [fork_exit(ctx, rec, code) for code in (61, 62, 63)]
        drain(ctx, lambda: all(p in rec.calls for p in mine))
        assert [rec.code(p) for p in mine] == [61, 62, 63]
        assert [p.wait(20) for p in procs] == [51, 52, 53]
        run = subprocess.run([sys.executable, "-c", PY_EXIT, "54"], check=False)
        assert run.returncode == 54


def test_selective_reap_beside_plain_children_that_exit_first() -> None:
    rec = Record()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
        theirs = [plain_fork_exit(70 + i) for i in range(5)]
        mine = fork_exit(ctx, rec, 80)
        drain(ctx, lambda: mine in rec.calls)
        for i, pid in enumerate(theirs):
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 70 + i


# -- several contexts, one handler -------------------------------------------
@pytest.mark.parametrize(
    "other",
    [SigchldOwner.SELECTIVE_REAP, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.PIDFD],
    ids=lambda m: m.name,
)
def test_one_handler_serves_several_contexts_and_routes_to_the_forker(other: SigchldOwner) -> None:
    """A LIBXL context's waitpid(-1) reaps another context's child: it must still
    reach the context that forked it, exactly once."""
    ra, rb = Record(), Record()
    with Context(SigchldOwner.LIBXL) as a, Context(SigchldOwner.LIBXL) as b:
        b.setmode(Hooks(chldowner=other))
        keeper = fork(a, ra, child_pause)
        pb = [fork_exit(b, rb, 90 + i) for i in range(5)]
        # Let a's waitpid(-1) take them first.
        time.sleep(0.2)
        a.dispatch()
        drain(b, lambda: all(p in rb.calls for p in pb))
        assert [rb.code(p) for p in pb] == [90, 91, 92, 93, 94]
        assert not ra.calls  # a saw none of b's
        os.kill(keeper, signal.SIGKILL)
        drain(a, lambda: keeper in ra.calls)
        assert not rb.duplicates() and not ra.duplicates()
        # a's last child is gone; the handler stays only if b's mode needs it.
        assert ours_installed() is (other is SigchldOwner.LIBXL_ALWAYS)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_owner_aliases_match_libxl_names() -> None:
    assert childproc.owner_libxl is SigchldOwner.LIBXL
    assert childproc.owner_mainloop is SigchldOwner.MAINLOOP
    assert childproc.owner_libxl_always is SigchldOwner.LIBXL_ALWAYS
    assert childproc.owner_selective_reap is SigchldOwner.SELECTIVE_REAP
