"""``childproc.doctor()`` and ``python -m childproc doctor [--pid PID]`` tell the truth:
about this process in each mode and with a host's handler, SIG_IGN or a C-level handler
installed; about a real second process in each of those states, from /proc alone; and
the traps they name are the errors' own words."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import childproc
from childproc import (
    Context,
    DoctorReport,
    SigchldIgnoredError,
    SigchldOwner,
    _cgroup,
    _doctor,
    _sigchld,
    forkserver,
)
from childproc._report import WAKEUP_FD_NOT_READ
from childproc._traps import TRAPS
from childproc._watchers import pidfd as pidfd_mod

from .procutil import fd_room

MODES = list(SigchldOwner)


def host_handler(signum: int, frame: object) -> None:
    pass


def keys(report: DoctorReport) -> set[str]:
    return {f.trap for f in report.findings}


@contextmanager
def c_level_handler(handler: int | None = None, flags: int = 0) -> Iterator[None]:
    """A SIGCHLD disposition set with sigaction from C (as libuv or a C extension would):
    a C function as the handler by default, or ``handler`` (0: SIG_DFL, 1: SIG_IGN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    act = _sigchld._SigAction()
    act.sa_handler = ctypes.cast(libc.getpid, ctypes.c_void_p).value if handler is None else handler
    act.sa_flags = flags
    assert libc.sigaction(signal.SIGCHLD, ctypes.byref(act), None) == 0
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


# -- this process ------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_reports_each_mode_its_watcher_and_children(mode: SigchldOwner) -> None:
    with Context(mode) as ctx:
        child = ctx.spawn(["sleep", "30"])
        try:
            report = childproc.doctor()
            assert report.source == "this process" and report.pid == os.getpid()
            assert report.contexts is not None
            (info,) = report.contexts
            assert (info.mode, info.watcher, info.outstanding_children) == (mode.name, ctx.watcher, 1)
            assert info.uses_sigchld_handler == ctx.uses_sigchld_handler
            (mine,) = [c for c in report.children if c.pid == child.pid]
            assert mine.watched_by == "childproc" and mine.state in "RS"
            assert report.sigchld.owner == ("childproc" if ctx.uses_sigchld_handler else "nobody")
            assert f"{mode.name}: watcher {ctx.watcher}, 1 outstanding" in str(report)
        finally:
            child.kill()
            if mode is SigchldOwner.MAINLOOP:
                pid, status = os.waitpid(child.pid, 0)
                ctx.childproc_reaped(pid, status)
            child.wait()


@pytest.mark.timeout(30)
def test_a_hosts_python_handler_sig_ign_and_a_c_handler() -> None:
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        report = childproc.doctor()
        assert (report.sigchld.disposition, report.sigchld.owner) == ("python", "the host")
        assert "host_handler" in (report.sigchld.handler or "")
        assert "foreign-handler" in keys(report)
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        report = childproc.doctor()
        assert report.sigchld.disposition == "ignored" and "sigchld-ignored" in keys(report)
        (finding,) = [f for f in report.findings if f.trap == "sigchld-ignored"]
        assert "SELECTIVE_REAP" in finding.message and "LIBXL_ALWAYS" in finding.message
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with c_level_handler():
        report = childproc.doctor()
        assert (report.sigchld.disposition, report.sigchld.owner) == ("c", "the host (C code)")
        assert report.sigchld.nocldwait is False and "foreign-handler" in keys(report)
        assert (report.sigchld.kernel_handler or "").startswith("0x")
    with c_level_handler(handler=1):  # SIG_IGN set from C: Python still says SIG_DFL
        report = childproc.doctor()
        assert report.sigchld.disposition == "ignored" and report.sigchld.kernel_handler == "SIG_IGN"
        assert "sigchld-ignored" in keys(report)
    with c_level_handler(handler=0, flags=_sigchld.SA_NOCLDWAIT):  # SIG_DFL, but statuses dropped
        report = childproc.doctor()
        assert report.sigchld.nocldwait is True and report.sigchld.sa_flags is not None
        (finding,) = [f for f in report.findings if f.trap == "sigchld-ignored"]
        assert "SA_NOCLDWAIT" in finding.message and "foreign-handler" not in keys(report)


@pytest.mark.timeout(30)
def test_a_handler_put_in_place_of_childproc_s_is_seen() -> None:
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        assert childproc.doctor().sigchld.owner == "childproc"
        with c_level_handler():
            report = childproc.doctor()
            assert report.sigchld.owner == "the host, in place of childproc's"
            assert "handler-replaced" in keys(report)
            with pytest.raises(childproc.HandlerReplacedError) as info:
                ctx.spawn(["true"])
            assert TRAPS["handler-replaced"].remedy in str(info.value)
        ctx.setmode(childproc.Hooks(chldowner=SigchldOwner.PIDFD))  # (childproc's handler back out)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("replacement", ["SIG_DFL", "SIG_IGN", "host_handler"])
def test_a_handler_put_in_place_of_childproc_s_from_python_is_seen(replacement: str) -> None:
    """signal.signal() over childproc's handler: the doctor said "default; held by
    nobody" (or that a LIBXL context would refuse to start), while the next call
    raised HandlerReplacedError naming the handler as "0"."""
    new = getattr(signal, replacement, host_handler)
    with Context(SigchldOwner.LIBXL) as ctx:
        child = ctx.spawn(["sleep", "30"])
        signal.signal(signal.SIGCHLD, new)
        try:
            report = childproc.doctor()
            assert report.sigchld.owner == "the host, in place of childproc's"
            assert "handler-replaced" in keys(report) and "foreign-handler" not in keys(report)
            (finding,) = [f for f in report.findings if f.trap == "handler-replaced"]
            with pytest.raises(childproc.HandlerReplacedError) as info:
                ctx.wait(0)
            assert replacement in finding.message and replacement in str(info.value)
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (first: SIG_IGN would discard its exit)
            child.kill()
        assert child.wait(10) is not None


@contextmanager
def host_sigchld_handler(c_level: bool) -> Iterator[None]:
    """A MAINLOOP host's own SIGCHLD handler: a Python one, or one installed from C."""
    if c_level:
        with c_level_handler():
            yield
        return
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("c_level", [False, True], ids=["python-handler", "c-handler"])
def test_a_mainloop_host_s_own_handler_is_no_trap(c_level: bool) -> None:
    """A host's SIGCHLD handler is what MAINLOOP expects (the host reaps and reports):
    no foreign-handler finding while every context is in MAINLOOP; one in another
    mode is told about it again."""
    with host_sigchld_handler(c_level), Context(SigchldOwner.MAINLOOP):
        report = childproc.doctor()
        assert report.sigchld.owner.startswith("the host") and "foreign-handler" not in keys(report)
        with Context(SigchldOwner.SELECTIVE_REAP):
            assert "foreign-handler" in keys(childproc.doctor())


def _pids_in(text: str) -> set[int]:
    return {int(word) for word in re.findall(r"\b\d+\b", text)}


@pytest.mark.timeout(60)
def test_mainloop_exits_nobody_reported_are_a_trap(monkeypatch: pytest.MonkeyPatch) -> None:
    """In MAINLOOP, a child of childproc's left a zombie (the host reaps only its own and
    never calls sigchld_occurred()) and one the host reaped but never reported are
    named, with what the host must do; a running child, a fork server's child (its exit
    comes on its exit fd) and reported ones are not."""
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        with forkserver.ForkServer.start() as server, Context(SigchldOwner.MAINLOOP) as ctx:
            zombie, reaped = ctx.spawn(["true"]), ctx.spawn(["true"])
            running = ctx.spawn(["sleep", "30"])
            served = ctx.watch_served(server.fork("tests.integration.fs_entries:pause_forever"))
            assert _wait_for(
                lambda: (
                    {c.pid for c in childproc.doctor().children if c.state == "Z"} >= {zombie.pid, reaped.pid}
                )
            )
            _, status = os.waitpid(reaped.pid, 0)  # the host reaps it, and does not report it
            report = childproc.doctor()
            (finding,) = [f for f in report.findings if f.trap == "unreported-exits"]
            zombies, gone = finding.message.split("zombies nobody reaped: ")[1].split("; reaped by someone")
            assert _pids_in(zombies.split(")")[0]) == {zombie.pid}
            assert _pids_in(gone.split(")")[0]) == {reaped.pid}
            assert {running.pid, served.pid}.isdisjoint(_pids_in(finding.message))
            assert TRAPS["unreported-exits"].remedy in finding.message
            assert "ctx.childproc_reaped(pid, status)" in finding.message
            assert "ctx.sigchld_occurred()" in finding.message
            assert "foreign-handler" not in keys(report)  # (the host's handler is MAINLOOP's)
            with monkeypatch.context() as m:  # a kernel without /proc/<pid>/task/<tid>/children
                m.setattr(_doctor, "children_of", lambda pid: [])
                blind = childproc.doctor()
                (again,) = [f for f in blind.findings if f.trap == "unreported-exits"]
            assert again.message == finding.message  # (the children still here are looked up)
            states = {c.pid: c.state for c in blind.children}
            assert states[zombie.pid] == "Z" and states[running.pid] != "Z"
            assert ctx.childproc_reaped(reaped.pid, status)
            (finding,) = [f for f in childproc.doctor().findings if f.trap == "unreported-exits"]
            assert _pids_in(finding.message.split(")")[0]) == {zombie.pid}
            ctx.sigchld_occurred()  # (reaps childproc's zombie)
            assert zombie.returncode == 0 and "unreported-exits" not in keys(childproc.doctor())
            running.kill()
            _, status = os.waitpid(running.pid, 0)
            assert ctx.childproc_reaped(running.pid, status)
            served.kill()
            assert _wait_for(lambda: ctx.dispatch() >= 0 and served.returncode is not None, 10)
            assert "unreported-exits" not in keys(childproc.doctor())
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pid", [0, -3, True, "1", 1.5])
def test_a_pid_that_is_no_process_id_is_refused(pid: object) -> None:
    with pytest.raises(childproc.InvalidArgumentError, match="positive int"):
        childproc.doctor(pid)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_foreign_children_zombies_threads_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)  # a child childproc did not make
    try:
        assert _wait_for(lambda: any(c.pid == pid and c.state == "Z" for c in childproc.doctor().children))
        report = childproc.doctor()
        assert report.zombies == (pid,) and report.reapers == ()
        (zombie,) = report.children
        assert (zombie.watched_by, zombie.command, zombie.parent) == ("not childproc", "true", os.getpid())
        assert "unreaped-zombies" in keys(report)  # nothing reaps here
        assert "foreign-children" not in keys(report)  # (no waitpid(-1) context to take it)
    finally:
        os.waitpid(pid, 0)
    with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
        proc = subprocess.Popen(["sleep", "5"])  # the host's child, beside a waitpid(-1) context
        try:
            report = childproc.doctor()
            assert "foreign-children" in keys(report) and "unreaped-zombies" not in keys(report)
            assert any("LIBXL_ALWAYS" in r for r in report.reapers)
        finally:
            proc.kill()
            ctx.wait(0.5)  # (LIBXL_ALWAYS reaps it: the host's Popen sees it gone)
            proc.returncode = -9
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="host-worker")
    worker.start()
    try:
        report = childproc.doctor()
        assert "host-worker" in {t.name for t in report.threads}
        # A threaded program that uses no fork server is told nothing about one.
        monkeypatch.delitem(sys.modules, "childproc.forkserver", raising=False)
        assert "threads-before-fork-server" not in keys(childproc.doctor())
        monkeypatch.setitem(sys.modules, "childproc.forkserver", forkserver)
        assert "threads-before-fork-server" in keys(childproc.doctor())
        # Started before the threads, as the docs say: nothing to warn of, and the
        # server is named among the children (it was "not childproc", bare).
        monkeypatch.setitem(forkserver.SERVERS, 4242, None)
        report = childproc.doctor()
        assert "threads-before-fork-server" not in keys(report)
    finally:
        stop.set()
        worker.join()
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    assert "no-pidfds" in keys(childproc.doctor())


@pytest.mark.timeout(30)
def test_the_wakeup_fd_is_left_alone_its_setting_and_every_signal_s_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The doctor does not touch :func:`signal.set_wakeup_fd`'s slot (Python shows it
    only by replacing it): a signal at any point of ``doctor()`` still writes its byte
    to the host's fd, and the host's ``warn_on_full_buffer=False`` still holds (a full
    pipe is not reported as "Exception ignored ... signal wakeup fd")."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # (a small pipe, quickly full)
    signal.signal(signal.SIGUSR1, host_handler)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    raised, written = 0, bytearray()

    def signal_everywhere(frame: object, event: str, arg: object) -> None:
        # After every C call the doctor makes (set_wakeup_fd(-1) among them, if it swapped
        # the slot): a signal, whose byte must reach the host's fd.
        nonlocal raised
        if event == "c_return":
            signal.raise_signal(signal.SIGUSR1)
            raised += 1
            with contextlib.suppress(BlockingIOError):
                written.extend(os.read(r, 4096))

    try:
        sys.setprofile(signal_everywhere)
        try:
            report = childproc.doctor()
        finally:
            sys.setprofile(None)
        with contextlib.suppress(BlockingIOError):
            written.extend(os.read(r, 4096))
        unraisable: list[object] = []
        monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * 4096)  # the host's loop is busy: its pipe is full
        signal.raise_signal(signal.SIGUSR1)
        for _ in range(100):  # (the report of a failed write is a pending call: let it run)
            time.sleep(0)
        lost = raised - written.count(signal.SIGUSR1)
        assert raised > 0 and (lost, unraisable) == (0, [])  # (warn_on_full_buffer=False still holds)
        assert report.wakeup_fd == WAKEUP_FD_NOT_READ and "not read" in str(report)
    finally:
        assert signal.set_wakeup_fd(old) == w  # still the host's
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        os.close(r)
        os.close(w)


def test_the_report_is_plain_data_and_frozen() -> None:
    report = childproc.doctor()
    data = json.loads(json.dumps(report.as_dict()))
    assert data["pid"] == os.getpid() and data["sigchld"]["disposition"] == "default"
    assert data["kill_tree"] == report.kill_tree and data["zombies"] == []
    with pytest.raises(AttributeError):
        report.pid = 1  # type: ignore[misc]


def test_reports_why_trees_fall_back_without_making_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where the process may not make cgroups, the doctor says kill_tree=True means a
    process group, and why (the places are faked: this machine runs as root)."""
    monkeypatch.setattr(_cgroup, "_homes", {})  # (this process's own home, if any, set aside)
    monkeypatch.setattr(_cgroup, "_locate", lambda: None)
    report = childproc.doctor()
    assert report.kill_tree == "process-group" and "no-cgroup-trees" in keys(report)
    assert "no cgroup2 hierarchy" in str(report)
    monkeypatch.setattr(_cgroup, "_locate", lambda: (str(tmp_path), "/"))  # no cgroup.procs there
    (finding,) = [f for f in childproc.doctor().findings if f.trap == "no-cgroup-trees"]
    assert "not delegated" in finding.message
    assert list(tmp_path.iterdir()) == []  # nothing made


# -- the errors speak the doctor's words -----------------------------------------------
@pytest.mark.timeout(30)
def test_errors_and_findings_come_from_one_table() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(SigchldIgnoredError) as info:
            Context(SigchldOwner.PIDFD)  # (refused at setmode)
        (finding,) = [f for f in childproc.doctor().findings if f.trap == "sigchld-ignored"]
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    trap = TRAPS["sigchld-ignored"]
    for text in (str(info.value), finding.message):
        assert trap.situation.format(why="SIG_IGN") in text and trap.remedy in text
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        with pytest.raises(childproc.SigchldConflictError) as conflict:
            Context(SigchldOwner.LIBXL_ALWAYS)
        (finding,) = [f for f in childproc.doctor().findings if f.trap == "foreign-handler"]
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for text in (str(conflict.value), finding.message):
        assert TRAPS["foreign-handler"].remedy in text and "host_handler" in text


# -- another process, from /proc -------------------------------------------------------
HELPER = r"""
import ctypes, os, signal, sys, threading
state = sys.argv[1]
if state == "ignored":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
elif state == "python":
    signal.signal(signal.SIGCHLD, lambda *a: None)
elif state == "c":
    class SigAction(ctypes.Structure):
        _fields_ = [("sa_handler", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * 16),
                    ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]
    libc = ctypes.CDLL(None)
    act = SigAction()
    act.sa_handler = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    libc.sigaction(signal.SIGCHLD, ctypes.byref(act), None)
elif state == "blocked":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
zombie = os.posix_spawn("/bin/true", ["true"], os.environ)
if state == "pidfd":  # (held: the process watches it, and may reap it)
    held = os.pidfd_open(zombie)
if state.startswith("waiting"):
    waiter = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ, setpgroup=0)
    # A wait that may take children (a process group's: the doctor does not match
    # groups), one that names its child (Popen.wait(), asyncio's watcher thread), or
    # one for stops only: blocked in wait() all three, beside the zombie.
    how = {
        "waiting": (os.waitpid, (-waiter, 0)),
        "waiting-one": (os.waitpid, (waiter, 0)),
        "waiting-stops": (os.waitid, (os.P_ALL, 0, os.WSTOPPED)),
    }[state]
    thread = threading.Thread(target=how[0], args=how[1], daemon=True)
    thread.start()
    while open(f"/proc/self/task/{thread.native_id}/wchan").read() != "do_wait":
        pass  # (until it is blocked in waitpid)
def state_of(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:  # ENOENT, or ESRCH while it goes
        return "gone"  # (SIGCHLD ignored: the kernel reaped it)
while state_of(zombie) not in ("Z", "gone"):
    pass
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def helper(state: str) -> Iterator[int]:
    """A second process in ``state`` with a zombie child it does not reap; its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HELPER, state], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "childproc", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("state", "disposition", "traps"),
    [
        ("default", "default", {"unreaped-zombies"}),
        ("ignored", "ignored", {"sigchld-ignored"}),
        ("python", "caught", set()),  # (a handler, whose /proc cannot say: a fact, not a trap)
        ("c", "caught", set()),
        ("blocked", "default", {"sigchld-blocked", "unreaped-zombies"}),
        ("waiting", "default", set()),
        ("waiting-one", "default", {"unreaped-zombies"}),  # (a wait for one pid reaps no other)
        ("waiting-stops", "default", {"unreaped-zombies"}),  # (nor does one without WEXITED)
        ("pidfd", "default", set()),
    ],
)
def test_pid_reads_a_live_process_from_proc(state: str, disposition: str, traps: set[str]) -> None:
    with helper(state) as pid:
        report = childproc.doctor(pid)
        proc = cli("--pid", str(pid), "--json")
        text = cli("--pid", str(pid))
    assert report.source == "/proc" and report.pid == pid and report.contexts is None
    assert report.sigchld.disposition == disposition
    found = keys(report)
    assert traps <= found, found
    if state in ("python", "c", "waiting", "pidfd"):
        assert "unreaped-zombies" not in found  # something there may reap it
    if state == "ignored":
        assert report.zombies == ()  # the kernel reaped it at once
    else:
        assert len(report.zombies) == 1
    if state == "waiting":
        assert any(t.waiting_for_children for t in report.threads)
    if state in ("waiting-one", "waiting-stops"):
        assert not any(t.waiting_for_children for t in report.threads)
    if state == "blocked":
        assert all(t.sigchld_blocked for t in report.threads)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["pid"] == pid and data["sigchld"]["disposition"] == disposition
    assert {f["trap"] for f in data["findings"]} == found
    assert text.returncode == 0 and f"childproc doctor for pid {pid}, read from /proc" in text.stdout


MODE_HELPER = r"""
import childproc, sys
mode = childproc.SigchldOwner[sys.argv[1]]
with childproc.Context(mode) as ctx:
    child = ctx.spawn(["sleep", "30"], kill_on_close=True)
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_pid_reads_a_process_running_childproc(mode: SigchldOwner) -> None:
    """From outside, a childproc program in each mode: its handler is seen as a
    handler (whose, /proc cannot say: no trap blames it), its child and its pidfds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MODE_HELPER, mode.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        report = childproc.doctor(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    uses_handler = mode in (SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS)
    assert report.sigchld.disposition == ("caught" if uses_handler else "default")
    assert "foreign-handler" not in keys(report) and "unreaped-zombies" not in keys(report)
    assert [c.command for c in report.children] == ["sleep"]
    if mode in (SigchldOwner.PIDFD, SigchldOwner.SELECTIVE_REAP, SigchldOwner.LIBXL_ALWAYS):
        assert (report.open_pidfds or 0) >= 1


@pytest.mark.timeout(30)
def test_cli_on_this_machine_and_on_a_missing_pid() -> None:
    out = cli()
    assert out.returncode == 0 and "SIGCHLD             : default; held by nobody" in out.stdout
    assert "kill_tree=True      : cgroup" in out.stdout
    data = json.loads(cli("--json").stdout)
    assert data["pidfds"] is True and data["contexts"] == [] and data["wakeup_fd"] == WAKEUP_FD_NOT_READ
    missing = cli("--pid", "999999999")
    assert missing.returncode == 1 and "no process 999999999" in missing.stderr
    for bad in ("0", "-1"):  # (a traceback before)
        refused = cli("--pid", bad)
        assert refused.returncode == 1 and refused.stderr.startswith("childproc doctor: pid must be")


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.timeout(60)
def test_the_command_ends_quietly_when_its_reader_goes_away() -> None:
    """``python -m childproc doctor | head -1``: the reader closes the pipe first; the
    command exits 1 without a traceback."""
    r, w = os.pipe()
    os.close(r)  # (the reader is gone before the report is written)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "childproc", "doctor", "--json"],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


@pytest.mark.timeout(30)
def test_a_look_while_out_of_fds_leaves_pidfds_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe for pidfds took EMFILE for a kernel without them, for good: a doctor
    call (or the first context) made while the process was out of fds turned pidfds
    off for the rest of the process's life. The doctor itself, out of fds, read
    "nothing there" everywhere (no threads, no children, no cgroup2): it says why it
    cannot look instead."""
    monkeypatch.setattr(pidfd_mod, "_supported", None)
    with fd_room(0):
        assert pidfd_mod.supported()
        with pytest.raises(OSError, match="out of file descriptors") as info:
            childproc.doctor()
        assert info.value.errno == errno.EMFILE
    monkeypatch.setattr(pidfd_mod, "_supported", None)
    assert pidfd_mod.supported()
    with Context(SigchldOwner.PIDFD) as ctx:
        assert ctx.spawn(["true"]).wait(10) is not None


@pytest.mark.timeout(30)
def test_a_fork_server_this_process_started_is_named_among_its_children() -> None:
    with forkserver.ForkServer.start() as server:
        (info,) = [c for c in childproc.doctor().children if c.pid == server.pid]
        assert info.watched_by == "not childproc: a childproc fork server"
    assert server.pid not in forkserver.SERVERS


@pytest.mark.timeout(30)
def test_a_thread_waiting_for_any_child_beside_a_context_is_a_trap() -> None:
    """A legacy reaper thread blocked in waitpid(-1) beside a SELECTIVE_REAP context
    takes its children's statuses: the doctor saw the thread and said nothing."""
    with Context() as ctx:
        child = ctx.spawn(["sleep", "30"])
        # (WNOWAIT: it returns at the exit without reaping, so childproc still reaps)
        thread = threading.Thread(target=os.waitid, args=(os.P_ALL, 0, os.WEXITED | os.WNOWAIT))
        thread.start()
        try:
            assert _wait_for(lambda: any(t.waiting_for_children for t in childproc.doctor().threads))
            report = childproc.doctor()
            (finding,) = [f for f in report.findings if f.trap == "reaper-thread"]
            assert str(thread.native_id) in finding.message and "SELECTIVE_REAP" in finding.message
        finally:
            child.kill()
            thread.join(10)
        assert child.wait(10) is not None and child.returncode == -signal.SIGKILL
