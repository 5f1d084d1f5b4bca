"""Child handles the sd-event way: events, adoption, deferred reap, safe signals, ownership."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from childproc import (
    AlreadyWatchedError,
    Child,
    ChildEvent,
    ChildExitedError,
    ChildState,
    ChildStolenError,
    Context,
    EventCode,
    Hooks,
    InvalidArgumentError,
    NotOurChildError,
    SigchldConflictError,
    SigchldOwner,
    SpawnError,
    StateError,
    UnknownChildError,
    _context,
    _process,
    doctor,
)
from childproc._watchers import pidfd as pidfd_mod

from .kids import child_pause, drain
from .procutil import children, fd_room, is_zombie, proc_state, wait_until

TRUE = "/bin/true"
PY = sys.executable


class Events:
    """Collects (child, event) pairs from on_event callbacks."""

    def __init__(self) -> None:
        self.seen: list[ChildEvent] = []
        self.lock = threading.Lock()

    def __call__(self, child: Child, event: ChildEvent) -> None:
        with self.lock:
            self.seen.append(event)

    def codes(self, pid: int) -> list[EventCode]:
        return [e.code for e in self.seen if e.pid == pid]

    def exits(self, pid: int) -> list[ChildEvent]:
        return [e for e in self.seen if e.pid == pid and e.terminal]


def ctx_in(mode: SigchldOwner) -> Context:
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=mode))
    return ctx


def fork_child(ctx: Context, on_event: Events, code: int = 0, pause: bool = False, **kw: object) -> Child:
    child = ctx.fork(on_event, **kw)  # type: ignore[arg-type]
    if child is None:
        try:
            if pause:
                child_pause()
        finally:
            os._exit(code)
    return child


ALL_REAPING = [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD]


# -- the handle ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ALL_REAPING, ids=lambda m: m.name)
def test_handle_tracks_state_and_final_status(mode: SigchldOwner) -> None:
    ev = Events()
    with ctx_in(mode) as ctx:
        child = fork_child(ctx, ev, pause=True)
        assert child.state is ChildState.RUNNING and child.final is None and child.returncode is None
        assert child.pidfd is not None  # this machine has pidfds
        assert ctx.child(child.pid) is child
        child.terminate()
        final = child.wait(20)
        assert final is not None and final.code is EventCode.KILLED and final.status == signal.SIGTERM
        assert child.returncode == -signal.SIGTERM
        assert child.state.value == "exited"
        assert child.pidfd is None  # closed once reaped
        assert ev.exits(child.pid) == [final]
        assert final.uid == os.getuid()
        with pytest.raises(UnknownChildError):
            ctx.child(child.pid)


def test_child_fork_pid_has_a_handle() -> None:
    got: list[int] = []
    with Context(SigchldOwner.LIBXL) as ctx:
        pid = ctx.child_fork(lambda p, s: got.append(os.waitstatus_to_exitcode(s)))
        if pid == 0:
            os._exit(17)
        handle = ctx.child(pid)
        assert handle.pid == pid
        handle.wait(20)
        assert got == [17] and handle.returncode == 17


# -- stop / continue -------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode", [SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.SELECTIVE_REAP], ids=lambda m: m.name
)
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
def test_stop_and_continue_events(mode: SigchldOwner, pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    ev = Events()
    with ctx_in(mode) as ctx:
        child = fork_child(ctx, ev, pause=True, events=os.WEXITED | os.WSTOPPED | os.WCONTINUED)
        # Stop/continue need SIGCHLD: even SELECTIVE_REAP with pidfds installs the handler now.
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
        for sig, code, state in (
            (signal.SIGSTOP, EventCode.STOPPED, ChildState.STOPPED),
            (signal.SIGCONT, EventCode.CONTINUED, ChildState.RUNNING),
            (signal.SIGSTOP, EventCode.STOPPED, ChildState.STOPPED),
            (signal.SIGCONT, EventCode.CONTINUED, ChildState.RUNNING),
        ):
            n = len(ev.seen)
            child.send_signal(sig)
            drain(ctx, lambda n=n: len(ev.seen) > n)  # type: ignore[misc]
            assert ev.seen[-1].code is code and child.state is state
            if code is EventCode.STOPPED:
                assert ev.seen[-1].status == signal.SIGSTOP
        child.kill()
        child.wait(20)
        assert ev.codes(child.pid) == [
            EventCode.STOPPED,
            EventCode.CONTINUED,
            EventCode.STOPPED,
            EventCode.CONTINUED,
            EventCode.KILLED,
        ]
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_oneshot_reports_only_the_first_stop_or_continue() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = fork_child(ctx, ev, pause=True, events=os.WEXITED | os.WSTOPPED | os.WCONTINUED, oneshot=True)
        child.send_signal(signal.SIGSTOP)
        drain(ctx, lambda: len(ev.seen) == 1)
        # No more stop/continue interest: the handler is no longer needed (pidfds suffice).
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        child.send_signal(signal.SIGCONT)
        assert wait_until(lambda: proc_state(child.pid) != "T")
        child.kill()
        child.wait(20)
        assert ev.codes(child.pid) == [EventCode.STOPPED, EventCode.KILLED]


def test_only_the_asked_for_kind() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = fork_child(ctx, ev, pause=True, events=os.WEXITED | os.WCONTINUED)
        child.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: proc_state(child.pid) == "T")
        ctx.dispatch()
        assert child.state is ChildState.STOPPED and ev.seen == []
        child.send_signal(signal.SIGCONT)
        drain(ctx, lambda: len(ev.seen) == 1)
        child.kill()
        child.wait(20)
        assert ev.codes(child.pid) == [EventCode.CONTINUED, EventCode.KILLED]


def test_stop_events_refused_where_they_cannot_work() -> None:
    with ctx_in(SigchldOwner.PIDFD) as ctx:
        with pytest.raises(InvalidArgumentError, match="need SIGCHLD"):
            ctx.fork(events=os.WEXITED | os.WSTOPPED)
        with pytest.raises(InvalidArgumentError, match="events must be"):
            ctx.fork(events=os.WSTOPPED)
        assert ctx.children == frozenset()


@pytest.mark.timeout(30)
def test_stop_events_beside_a_host_handler_say_that_they_are_the_cause() -> None:
    """SELECTIVE_REAP with pidfds works beside a host's SIGCHLD handler; only stop
    events need childproc's own. The refusal says so, and how to go on, not to remove
    the host's handler, as if childproc could not run beside it (it said that).
    (Without pidfds the mode needs its handler for every child: setmode() refuses.)"""
    old = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    try:
        with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
            assert ctx.spawn(["true"]).wait(10) is not None
            says = r"stop/continue events .*Watch exits only \(events=os\.WEXITED"
            with pytest.raises(SigchldConflictError, match=says) as info:
                ctx.spawn(["true"], events=os.WEXITED | os.WSTOPPED)
            assert "remove that handler" not in str(info.value)
            assert ctx.children == frozenset()
    finally:
        signal.signal(signal.SIGCHLD, old)


# -- callback before reap ----------------------------------------------------------------
@pytest.mark.parametrize("mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD], ids=lambda m: m.name)
@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
def test_exit_callback_sees_the_zombie_then_it_is_reaped(mode: SigchldOwner, raises: bool) -> None:
    seen: dict[str, object] = {}

    def on_event(child: Child, event: ChildEvent) -> None:
        seen["state"] = proc_state(child.pid)  # /proc/<pid> still there
        with open(f"/proc/{child.pid}/stat") as f:
            seen["comm"] = f.read().split()[1]
        seen["status"] = event.returncode
        if raises:
            raise RuntimeError("callback failed")

    with ctx_in(mode) as ctx:
        child = ctx.fork(on_event, reap_after_callback=True)
        if child is None:
            os._exit(23)
        while "state" not in seen:
            try:
                ctx.wait(20)
            except RuntimeError:
                assert raises
        assert seen["state"] == "Z" and seen["status"] == 23
        assert not is_zombie(child.pid)  # reaped right after the callback
        assert child.pid not in children()
        assert child.pidfd is None


def test_reap_after_callback_refused_where_reaping_is_by_any() -> None:
    for mode in (SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS, SigchldOwner.MAINLOOP):
        with ctx_in(mode) as ctx, pytest.raises(InvalidArgumentError, match="reap_after_callback"):
            ctx.fork(reap_after_callback=True)


# -- signalling safely -------------------------------------------------------------------
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
def test_signal_after_exit_is_refused(pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not pidfds:
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    kills: list[tuple[int, int]] = []
    real_kill = os.kill

    def spy_kill(pid: int, sig: int) -> None:
        kills.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", spy_kill)
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = fork_child(ctx, ev, pause=True)
        assert (child.pidfd is not None) is pidfds
        child.send_signal(signal.SIGUSR1)  # default action: terminate
        assert kills == ([] if pidfds else [(child.pid, signal.SIGUSR1)])
        child.wait(20)
        assert child.returncode == -signal.SIGUSR1
        n = len(kills)
        with pytest.raises(ChildExitedError, match="may now name another process") as info:
            child.send_signal(signal.SIGTERM)
        assert isinstance(info.value, ProcessLookupError)  # (what asyncio's send_signal raises)
        child.kill()  # nothing, as Popen.kill once the child has exited
        child.terminate()
        assert len(kills) == n  # no kill() on a number that may be recycled
        with pytest.raises(InvalidArgumentError, match="signal"):
            fork_child(ctx, ev).send_signal(9999)
        drain(ctx, lambda: not ctx.children)


def test_signal_refused_once_exit_seen_even_before_delivery() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = fork_child(ctx, ev, code=3)
        assert wait_until(lambda: is_zombie(child.pid))
        ctx._dispatcher.collect()  # observe (reap) without delivering
        assert child.state is ChildState.EXITED and ev.seen == []
        with pytest.raises(ChildExitedError):
            child.send_signal(signal.SIGTERM)
        child.terminate()  # (dead: nothing to do, and nothing sent)
        ctx.dispatch()
        assert [e.returncode for e in ev.exits(child.pid)] == [3]


def test_mainloop_without_pidfd_refuses_to_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    with ctx_in(SigchldOwner.MAINLOOP) as ctx:
        child = fork_child(ctx, Events(), pause=True)
        with pytest.raises(StateError, match="cannot signal"):
            child.terminate()
        os.kill(child.pid, signal.SIGKILL)
        _, status = os.waitpid(child.pid, 0)
        assert ctx.childproc_reaped(child.pid, status)


# -- ownership -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [*ALL_REAPING, SigchldOwner.MAINLOOP], ids=lambda m: m.name)
def test_kill_on_close_leaves_no_process_and_no_zombie(mode: SigchldOwner) -> None:
    ctx = ctx_in(mode)
    owned = [fork_child(ctx, Events(), pause=True, kill_on_close=True) for _ in range(5)]
    pids = [c.pid for c in owned]
    ctx.close()
    for pid in pids:
        assert pid not in children()
        assert not os.path.exists(f"/proc/{pid}")
    assert all(c.state is ChildState.EXITED and c.pidfd is None for c in owned)


def test_release_kills_or_leaves() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        owned = fork_child(ctx, ev, pause=True, kill_on_close=True)
        kept = fork_child(ctx, ev, pause=True)
        with owned:
            pass  # leaving the block releases it
        assert not os.path.exists(f"/proc/{owned.pid}") and owned.released
        kept.release()
        assert kept.pid not in ctx.children and kept.pid in children()  # inherited by the app
        os.kill(kept.pid, signal.SIGKILL)
        os.waitpid(kept.pid, 0)
        ctx.dispatch()
        assert ev.seen == []  # released children get no callback


# -- adoption ------------------------------------------------------------------------------
def spawn_outside(code: int, sleep: float = 0.0) -> int:
    return os.posix_spawn(
        PY, [PY, "-c", f"import time,sys; time.sleep({sleep}); sys.exit({code})"], os.environ
    )


@pytest.mark.parametrize("mode", [*ALL_REAPING, SigchldOwner.MAINLOOP], ids=lambda m: m.name)
def test_adopt_by_pid(mode: SigchldOwner) -> None:
    ev = Events()
    with ctx_in(mode) as ctx:
        pid = spawn_outside(31, 0.2)
        child = ctx.adopt(pid, ev)
        with pytest.raises(AlreadyWatchedError):
            ctx.adopt(pid, ev)
        if mode is SigchldOwner.MAINLOOP:
            _, status = os.waitpid(pid, 0)
            assert ctx.childproc_reaped(pid, status)
        else:
            child.wait(20)
        assert [e.returncode for e in ev.exits(pid)] == [31]


@pytest.mark.parametrize("own", [True, False], ids=["owned", "borrowed"])
def test_adopt_by_pidfd(own: bool) -> None:
    ev = Events()
    with ctx_in(SigchldOwner.PIDFD) as ctx:
        pid = spawn_outside(32)
        fd = os.pidfd_open(pid)
        child = ctx.adopt(pidfd=fd, on_event=ev, own_pidfd=own)
        assert child.pid == pid
        assert (child.pidfd == fd) is own
        child.wait(20)
        assert [e.returncode for e in ev.exits(pid)] == [32]
        fd_open = True
        try:
            os.fstat(fd)
        except OSError:
            fd_open = False
        assert fd_open is not own  # owned: childproc closed it; borrowed: still the caller's
        if not own:
            os.close(fd)


def test_adopt_an_already_dead_child() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        pid = spawn_outside(33)
        assert wait_until(lambda: is_zombie(pid))
        child = ctx.adopt(pid, ev)
        child.wait(20)
        assert child.returncode == 33


def test_adopt_refuses_bad_pids() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        for bad in (0, 1, -5):
            with pytest.raises(InvalidArgumentError):
                ctx.adopt(bad)
        with pytest.raises(InvalidArgumentError, match="exactly one"):
            ctx.adopt()
        with pytest.raises(NotOurChildError):
            ctx.adopt(os.getppid())  # a process, but not our child
        pid = spawn_outside(0)
        os.waitpid(pid, 0)
        with pytest.raises(NotOurChildError):
            ctx.adopt(pid)  # already reaped
        r, w = os.pipe()
        try:
            with pytest.raises(InvalidArgumentError, match="not a pidfd"):
                ctx.adopt(pidfd=r)
        finally:
            os.close(r)
            os.close(w)
        assert ctx.children == frozenset()


# -- the signal-free watcher -------------------------------------------------------------------
def test_pidfd_mode_from_a_worker_thread_never_touches_sigchld() -> None:
    results: dict[str, object] = {}

    def worker() -> None:
        ev = Events()
        with ctx_in(SigchldOwner.PIDFD) as ctx:
            kids = [ctx.spawn([PY, "-c", f"import sys; sys.exit({i})"], ev) for i in range(10)]
            results["disposition_during"] = signal.getsignal(signal.SIGCHLD)
            for k in kids:
                k.wait(30)
            results["codes"] = [k.returncode for k in kids]
            results["watcher"] = ctx.watcher

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert results["codes"] == list(range(10))
    assert results["disposition_during"] == signal.SIG_DFL
    assert results["watcher"] == "PIDFD"
    assert not _process.snapshot()["pending_main_thread_change"]


def test_forced_fallback_is_said_and_still_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    monkeypatch.setattr(_context, "_fallback_logged", False)
    caplog.set_level(logging.WARNING, logger="childproc")
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        assert ctx.watcher == "SCAN"
        assert any("falls back to SIGCHLD" in m for m in caplog.messages)
        procs = [subprocess.Popen([PY, "-c", "import sys; sys.exit(44)"]) for _ in range(3)]
        kids = [fork_child(ctx, ev, code=45) for _ in range(3)]
        for k in kids:
            k.wait(20)
        assert [k.returncode for k in kids] == [45] * 3
        assert [p.wait(20) for p in procs] == [44] * 3
    assert "no-pidfds" in {f.trap for f in doctor().findings}


@pytest.mark.parametrize("mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD], ids=lambda m: m.name)
def test_fd_exhaustion_degrades_without_losing_children(mode: SigchldOwner) -> None:
    ev = Events()
    with ctx_in(mode) as ctx:
        with fd_room(5):
            kids = [fork_child(ctx, ev, code=i % 50) for i in range(40)]
        assert any(k.pidfd is None for k in kids), "the limit should have run out of pidfds"
        drain(ctx, lambda: not ctx.children, timeout=30)
        assert sorted(e.returncode or 0 for e in ev.seen) == sorted(i % 50 for i in range(40))
        assert len(ev.seen) == 40


# -- spawn ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [*ALL_REAPING, SigchldOwner.MAINLOOP], ids=lambda m: m.name)
def test_spawn_in_every_mode(mode: SigchldOwner, tmp_path: object) -> None:
    ev = Events()
    r, w = os.pipe()
    extra_r, extra_w = os.pipe()
    try:
        with ctx_in(mode) as ctx:
            code = (
                "import os, sys; "
                "os.write(1, (os.getcwd() + '|' + os.environ['CHILDPROC_T']).encode()); "
                f"os.write({extra_w}, b'passed'); sys.exit(7)"
            )
            child = ctx.spawn(
                [PY, "-c", code],
                ev,
                env={"CHILDPROC_T": "env-ok", "PATH": os.environ["PATH"]},
                cwd=str(tmp_path),
                pass_fds=[extra_w],
                stdout=w,
            )
            os.close(w)
            w = -1
            os.close(extra_w)
            extra_w = -1
            out = b""
            while chunk := os.read(r, 4096):
                out += chunk
            if mode is SigchldOwner.MAINLOOP:
                _, status = os.waitpid(child.pid, 0)
                assert ctx.childproc_reaped(child.pid, status)
            else:
                child.wait(20)
            assert out.decode() == f"{tmp_path}|env-ok"
            assert os.read(extra_r, 100) == b"passed"
            assert child.returncode == 7
            assert [e.returncode for e in ev.exits(child.pid)] == [7]
    finally:
        for fd in (r, w, extra_r, extra_w):
            if fd >= 0:
                os.close(fd)


def test_spawn_errors() -> None:
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        with pytest.raises(SpawnError) as info:
            ctx.spawn(["/nonexistent/program"])
        assert info.value.errno == 2 and isinstance(info.value, OSError)
        with pytest.raises(InvalidArgumentError, match="argv"):
            ctx.spawn([])
        with pytest.raises(TypeError, match=r"give \['/bin/true'\]") as wrong_type:
            ctx.spawn("/bin/true")  # a string, not a list: a TypeError, as an int argv is
        assert isinstance(wrong_type.value, InvalidArgumentError)
        with pytest.raises(TypeError, match=r"shlex\.split"):
            ctx.spawn("ls -l /")
        with pytest.raises(InvalidArgumentError, match="pass_fds"):
            ctx.spawn([TRUE], pass_fds=[-1])
        assert ctx.children == frozenset()


def test_spawn_many_short_children_exactly_once() -> None:
    ev = Events()
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        kids = [ctx.spawn([TRUE], ev) for _ in range(300)]
        drain(ctx, lambda: len(ev.seen) == 300, timeout=60)
        assert sorted(e.pid for e in ev.seen) == sorted(k.pid for k in kids)
        assert all(e.returncode == 0 for e in ev.seen)
    time.sleep(0)


# -- regressions found in review --------------------------------------------------------
def test_handles_left_running_by_close_refuse_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append(pid))
    ctx = ctx_in(SigchldOwner.SELECTIVE_REAP)
    child = fork_child(ctx, Events(), pause=True)
    with pytest.warns(ResourceWarning):
        ctx.close()
    with pytest.raises(ChildExitedError):
        child.terminate()  # the handle is released: the pid is not signalled through it any more
    assert kills == []
    monkeypatch.undo()
    os.kill(child.pid, signal.SIGKILL)
    assert wait_until(lambda: child.pid not in children(), timeout=5)  # reaped by the orphanage


def test_close_reaps_an_unobserved_deferred_zombie() -> None:
    ctx = ctx_in(SigchldOwner.SELECTIVE_REAP)
    child = ctx.fork(reap_after_callback=True)
    if child is None:
        os._exit(0)
    assert wait_until(lambda: is_zombie(child.pid))
    ctx.close()
    assert child.pid not in children()


def test_child_wait_in_mainloop_returns_when_another_thread_reports() -> None:
    with ctx_in(SigchldOwner.MAINLOOP) as ctx:
        child = fork_child(ctx, Events(), code=9)
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(child.wait(20)))
        t.start()
        _, status = os.waitpid(child.pid, 0)
        time.sleep(0.05)
        t0 = time.monotonic()
        assert ctx.childproc_reaped(child.pid, status)
        t.join(20)
        assert time.monotonic() - t0 < 2.0
        assert got and isinstance(got[0], ChildEvent) and got[0].returncode == 9


def test_spawn_checks_program_and_cwd_up_front(tmp_path: object) -> None:
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        with pytest.raises(SpawnError) as info:
            ctx.spawn(["no-such-program-here"], cwd=str(tmp_path))
        assert info.value.errno == 2
        with pytest.raises(SpawnError) as info:
            ctx.spawn([TRUE], cwd=f"{tmp_path}/missing")
        assert info.value.errno == 2
        with pytest.raises(SpawnError) as info:
            ctx.spawn([TRUE], cwd=TRUE)
        assert info.value.errno == 20  # ENOTDIR
        assert ctx.children == frozenset()


def test_spawn_looks_programs_up_on_env_path(tmp_path: object) -> None:
    prog = os.path.join(str(tmp_path), "only-here")
    with open(prog, "w") as f:
        f.write("#!/bin/sh\nexit 37\n")
    os.chmod(prog, 0o755)
    with ctx_in(SigchldOwner.SELECTIVE_REAP) as ctx:
        child = ctx.spawn(["only-here"], env={"PATH": str(tmp_path)})
        child.wait(20)
        assert child.returncode == 37
        with pytest.raises(SpawnError):
            ctx.spawn(["only-here"])  # not on this process's PATH


def test_mainloop_without_pidfd_does_not_kill_on_close(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    ctx = ctx_in(SigchldOwner.MAINLOOP)
    child = fork_child(ctx, Events(), pause=True, kill_on_close=True)
    with caplog.at_level(logging.WARNING, logger="childproc"):
        ctx.close()
    assert any("not killing child" in m for m in caplog.messages)
    assert not is_zombie(child.pid) and child.pid in children()
    os.kill(child.pid, signal.SIGKILL)
    os.waitpid(child.pid, 0)


def test_libxl_refuses_to_start_beside_foreign_children() -> None:
    proc = subprocess.Popen([PY, "-c", "import sys, time; time.sleep(0.3); sys.exit(5)"])
    try:
        with Context(SigchldOwner.LIBXL) as ctx:
            with pytest.raises(StateError, match="returncode 0"):
                ctx.child_fork(print)
            assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    finally:
        assert proc.wait(20) == 5  # untouched


def test_close_reaps_an_observed_but_undelivered_deferred_zombie() -> None:
    ctx = ctx_in(SigchldOwner.SELECTIVE_REAP)
    child = ctx.fork(reap_after_callback=True)
    if child is None:
        os._exit(0)
    assert wait_until(lambda: is_zombie(child.pid))
    ctx._dispatcher.collect()  # its exit is seen (kept a zombie for the callback), not delivered
    assert child.state is ChildState.EXITED and is_zombie(child.pid)
    ctx.close()
    assert child.pid not in children()


@pytest.mark.timeout(30)
def test_a_relative_program_with_cwd_is_found_there(tmp_path: Path) -> None:
    """As subprocess: the program runs after the change of directory."""
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\nexit 7\n")
    prog.chmod(0o755)
    with Context() as ctx:
        child = ctx.spawn(["./prog"], cwd=str(tmp_path))
        assert child.wait(10) is not None and child.returncode == 7
        with pytest.raises(FileNotFoundError):
            ctx.spawn(["./no-such-prog"], cwd=str(tmp_path))


@pytest.mark.timeout(30)
def test_kill_after_the_exit_does_nothing_as_popens() -> None:
    """Code ported from subprocess kills in a ``finally`` or after a timeout whether or
    not the child is still there: Popen's kill() and terminate() then do nothing, and
    so do childproc's (sync and asyncio), sending nothing. send_signal still refuses,
    with an error that is also asyncio's ProcessLookupError."""
    import asyncio  # noqa: PLC0415

    from childproc import asyncio_host  # noqa: PLC0415

    with Context(SigchldOwner.PIDFD) as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "exit 0"], stdout=subprocess.PIPE)
        try:
            child.communicate(timeout=5)
        finally:
            child.kill()
            child.terminate()
        assert child.returncode == 0
        with pytest.raises(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    async def main() -> None:
        async with asyncio_host.open_context() as actx:
            achild = actx.spawn(["/bin/sh", "-c", "exit 0"])
            try:
                await achild.wait()
            finally:
                achild.kill()
            assert achild.returncode == 0

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_kill_of_a_child_whose_fork_server_went_away_still_refuses() -> None:
    """A served child whose server stopped first is lost, not known dead (it runs
    on, adopted): kill() refuses there as send_signal does, never quietly."""
    from childproc.forkserver import ForkServer, ForkServerDied  # noqa: PLC0415

    server = ForkServer.start()
    try:
        with Context(SigchldOwner.PIDFD) as ctx:
            child = ctx.watch_served(server.spawn(["sleep", "30"]))
            pidfd = os.pidfd_open(child.pid)
            try:
                server.stop_server_only()
                with pytest.raises(ChildStolenError):
                    child.wait(5)
                with pytest.raises(ChildExitedError):
                    child.kill()
                signal.pidfd_send_signal(pidfd, 0)  # (it does run on)
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
    finally:
        with contextlib.suppress(ForkServerDied):  # (its server part was stopped above)
            server.stop()


@pytest.mark.timeout(30)
def test_stop_refuses_bad_arguments_before_sending_anything() -> None:
    with Context() as ctx:
        child = ctx.spawn(["sleep", "30"], kill_on_close=True)
        with pytest.raises(InvalidArgumentError, match="not a signal number"):
            child.stop(sig=99999)
        with pytest.raises(InvalidArgumentError, match="grace"):
            child.stop(grace=-1)
        assert child.returncode is None and proc_state(child.pid) not in (None, "Z")


@pytest.mark.timeout(30)
def test_stop_leaves_its_child_be_when_another_childs_callback_raises() -> None:
    """stop() kills on an interrupt only: an error from another child's callback,
    run while it waited, goes on and the stopping child exits as it would."""

    def boom(child: Child, event: ChildEvent) -> None:
        raise RuntimeError("another child's callback")

    with Context() as ctx:
        a = ctx.spawn(
            ["sh", "-c", "trap 'sleep 0.3; exit 0' TERM; echo ready; while :; do sleep 0.05; done"],
            stdout=subprocess.PIPE,
        )
        a.stdout.readline()
        ctx.spawn(["sh", "-c", "sleep 0.1"], boom)
        with pytest.raises(RuntimeError, match="another child's callback"):
            a.stop(grace=5)
        event = a.wait(5)
        assert event is not None and event.returncode == 0


@pytest.mark.timeout(30)
def test_kill_of_a_child_someone_else_reaped_does_nothing() -> None:
    """Reaped behind childproc's back, the child is dead whenever childproc notices:
    kill() does nothing, before the context notices and after (the same answer)."""
    with Context(SigchldOwner.PIDFD) as ctx:
        for notice in (False, True):
            child = ctx.spawn(["/bin/sh", "-c", "exit 0"])
            os.waitpid(child.pid, 0)  # (stolen)
            if notice:
                with pytest.raises(ChildStolenError):
                    child.wait(5)
            child.kill()
            child.terminate()
        while ctx.children:
            with contextlib.suppress(ChildStolenError):
                ctx.wait(5)
