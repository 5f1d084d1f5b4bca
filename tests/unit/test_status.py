"""Wait statuses: :func:`describe_status`, :func:`status_from_siginfo` and :class:`ChildEvent`."""

from __future__ import annotations

import dataclasses
import enum
import os
import signal
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import childproc
from childproc._status import (
    CLD_CONTINUED,
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    CLD_STOPPED,
    CLD_TRAPPED,
    ChildEvent,
    EventCode,
    describe_status,
    status_from_siginfo,
)

# Wait statuses built by hand, as the kernel encodes them.


def exited(code: int) -> int:
    return code << 8


def killed(signo: int, core: bool = False) -> int:
    return signo | 0x80 if core else signo


def stopped(signo: int) -> int:
    return (signo << 8) | 0x7F


CONTINUED = 0xFFFF

exit_codes = st.integers(min_value=0, max_value=255)
signals = st.integers(min_value=1, max_value=64)
fast = settings(max_examples=300, deadline=None)


# -- describe_status -----------------------------------------------------------


def test_describe_status() -> None:
    cases = [
        (exited(0), "exited with status 0"),
        (exited(3), "exited with status 3"),
        (exited(255), "exited with status 255"),
        (killed(signal.SIGKILL), "killed by SIGKILL"),
        (killed(signal.SIGTERM), "killed by SIGTERM"),
        (killed(signal.SIGSEGV, core=True), "killed by SIGSEGV (core dumped)"),
        (killed(signal.SIGABRT, core=True), "killed by SIGABRT (core dumped)"),
        (stopped(signal.SIGSTOP), "stopped by SIGSTOP"),
        (stopped(signal.SIGTSTP), "stopped by SIGTSTP"),
        (CONTINUED, "continued"),
    ]
    for status, text in cases:
        assert describe_status(status) == text


def test_describe_status_unnamed_signal() -> None:
    # Realtime signals between SIGRTMIN and SIGRTMAX have no enum name.
    signo = signal.SIGRTMIN + 1
    assert describe_status(killed(signo)) == f"killed by signal {signo}"
    assert describe_status(stopped(signo)) == f"stopped by signal {signo}"


@given(code=exit_codes)
@fast
def test_describe_any_exit(code: int) -> None:
    assert describe_status(exited(code)) == f"exited with status {code}"


@given(signo=signals, core=st.booleans())
@fast
def test_describe_any_kill(signo: int, core: bool) -> None:
    text = describe_status(killed(signo, core))
    assert text.startswith("killed by ")
    assert text.endswith(" (core dumped)") == core


@given(signo=signals)
@fast
def test_describe_any_stop(signo: int) -> None:
    assert describe_status(stopped(signo)).startswith("stopped by ")


# -- status_from_siginfo -------------------------------------------------------


def test_cld_codes_are_the_linux_numbers() -> None:
    assert (CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED) == (1, 2, 3, 4, 5, 6)


@given(code=exit_codes)
@fast
def test_siginfo_exited_roundtrip(code: int) -> None:
    status = status_from_siginfo(CLD_EXITED, code)
    assert status == exited(code)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == code
    assert not os.WIFSIGNALED(status)
    assert not os.WIFSTOPPED(status)
    assert not os.WIFCONTINUED(status)
    assert os.waitstatus_to_exitcode(status) == code


@given(signo=signals)
@fast
def test_siginfo_killed_roundtrip(signo: int) -> None:
    status = status_from_siginfo(CLD_KILLED, signo)
    assert status == killed(signo)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signo
    assert not os.WCOREDUMP(status)
    assert not os.WIFEXITED(status)
    assert not os.WIFSTOPPED(status)
    assert not os.WIFCONTINUED(status)
    assert os.waitstatus_to_exitcode(status) == -signo


@given(signo=signals)
@fast
def test_siginfo_dumped_roundtrip(signo: int) -> None:
    status = status_from_siginfo(CLD_DUMPED, signo)
    assert status == killed(signo, core=True)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signo
    assert os.WCOREDUMP(status)
    assert not os.WIFEXITED(status)
    assert not os.WIFSTOPPED(status)
    assert not os.WIFCONTINUED(status)


@given(signo=signals, code=st.sampled_from([CLD_STOPPED, CLD_TRAPPED]))
@fast
def test_siginfo_stopped_roundtrip(signo: int, code: int) -> None:
    status = status_from_siginfo(code, signo)
    assert status == stopped(signo)
    assert os.WIFSTOPPED(status)
    assert os.WSTOPSIG(status) == signo
    assert not os.WIFEXITED(status)
    assert not os.WIFSIGNALED(status)
    assert not os.WIFCONTINUED(status)


@given(si_status=st.integers(min_value=0, max_value=255))
@fast
def test_siginfo_continued_roundtrip(si_status: int) -> None:
    # waitid() puts SIGCONT in si_status; the wait status ignores it.
    status = status_from_siginfo(CLD_CONTINUED, si_status)
    assert status == CONTINUED
    assert os.WIFCONTINUED(status)
    assert not os.WIFEXITED(status)
    assert not os.WIFSIGNALED(status)
    assert not os.WIFSTOPPED(status)
    assert describe_status(status) == "continued"


@given(
    code=st.integers(min_value=-(2**31), max_value=2**31 - 1).filter(
        lambda c: c not in (CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED)
    ),
    si_status=st.integers(min_value=0, max_value=255),
)
@fast
def test_siginfo_unknown_code_raises(code: int, si_status: int) -> None:
    with pytest.raises(ValueError):
        status_from_siginfo(code, si_status)


def test_siginfo_unknown_code_examples() -> None:
    for code in (0, 7, -1, 128):
        with pytest.raises(ValueError, match=str(code)):
            status_from_siginfo(code, 0)


# -- EventCode and ChildEvent ----------------------------------------------------


def test_event_code_is_the_cld_numbers() -> None:
    assert issubclass(EventCode, enum.IntEnum)
    assert [(code.name, int(code)) for code in EventCode] == [
        ("EXITED", CLD_EXITED),
        ("KILLED", CLD_KILLED),
        ("DUMPED", CLD_DUMPED),
        ("TRAPPED", CLD_TRAPPED),
        ("STOPPED", CLD_STOPPED),
        ("CONTINUED", CLD_CONTINUED),
    ]
    for name in ("CLD_EXITED", "CLD_KILLED", "CLD_DUMPED", "CLD_TRAPPED", "CLD_STOPPED", "CLD_CONTINUED"):
        if hasattr(os, name):
            assert EventCode[name.removeprefix("CLD_")] == getattr(os, name)
    assert childproc.EventCode is EventCode
    assert childproc.ChildEvent is ChildEvent


def all_wait_statuses() -> list[tuple[int, EventCode, int]]:
    """Every wait status a child can produce for signals 1..64, as (status, code, si_status)."""
    cases = [(exited(code), EventCode.EXITED, code) for code in range(256)]
    for signo in range(1, 65):
        cases.append((killed(signo), EventCode.KILLED, signo))
        cases.append((killed(signo, core=True), EventCode.DUMPED, signo))
        cases.append((stopped(signo), EventCode.STOPPED, signo))
    cases.append((CONTINUED, EventCode.CONTINUED, 0))
    return cases


ALL_WAIT_STATUSES = all_wait_statuses()


def test_all_wait_statuses_are_distinct() -> None:
    assert len({ws for ws, _, _ in ALL_WAIT_STATUSES}) == len(ALL_WAIT_STATUSES) == 256 + 3 * 64 + 1


def test_child_event_round_trips_every_wait_status() -> None:
    for ws, code, si_status in ALL_WAIT_STATUSES:
        event = ChildEvent.from_wait_status(4242, ws)
        assert event == ChildEvent(4242, code, si_status, None), hex(ws)
        assert type(event.code) is EventCode
        assert event.wait_status == ws, hex(ws)
        # The same event as waitid() would describe it.
        assert status_from_siginfo(int(event.code), event.status) == ws


def test_child_event_returncode_matches_waitstatus_to_exitcode() -> None:
    for ws, code, _ in ALL_WAIT_STATUSES:
        event = ChildEvent.from_wait_status(1, ws)
        terminal = code in (EventCode.EXITED, EventCode.KILLED, EventCode.DUMPED)
        assert event.terminal is terminal
        if terminal:
            assert event.returncode == os.waitstatus_to_exitcode(ws), hex(ws)
        else:
            assert event.returncode is None
            with pytest.raises(ValueError):
                os.waitstatus_to_exitcode(ws)


def test_child_event_terminal_and_returncode() -> None:
    cases: list[tuple[ChildEvent, bool, int | None]] = [
        (ChildEvent(1, EventCode.EXITED, 0), True, 0),
        (ChildEvent(1, EventCode.EXITED, 255), True, 255),
        (ChildEvent(1, EventCode.KILLED, signal.SIGKILL), True, -signal.SIGKILL),
        (ChildEvent(1, EventCode.DUMPED, signal.SIGSEGV), True, -signal.SIGSEGV),
        (ChildEvent(1, EventCode.STOPPED, signal.SIGSTOP), False, None),
        (ChildEvent(1, EventCode.TRAPPED, signal.SIGTRAP), False, None),
        (ChildEvent(1, EventCode.CONTINUED, 0), False, None),
    ]
    for event, terminal, returncode in cases:
        assert event.terminal is terminal, event
        assert event.returncode == returncode, event


def test_trapped_is_reported_as_a_stop() -> None:
    event = ChildEvent(7, EventCode.TRAPPED, signal.SIGTRAP)
    assert event.wait_status == stopped(signal.SIGTRAP)
    # waitpid cannot tell a trap from a stop: decoding gives STOPPED.
    assert ChildEvent.from_wait_status(7, event.wait_status) == ChildEvent(
        7, EventCode.STOPPED, signal.SIGTRAP
    )


@given(
    pid=st.integers(min_value=1, max_value=2**22),
    case=st.sampled_from(ALL_WAIT_STATUSES),
    uid=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
)
@fast
def test_child_event_keeps_pid_and_uid(pid: int, case: tuple[int, EventCode, int], uid: int | None) -> None:
    ws, code, si_status = case
    event = ChildEvent.from_wait_status(pid, ws, uid)
    assert (event.pid, event.code, event.status, event.uid) == (pid, code, si_status, uid)
    assert ChildEvent.from_wait_status(pid, ws, uid=uid) == event
    assert event.wait_status == ws


def test_child_event_uid_defaults_to_none() -> None:
    assert ChildEvent(1, EventCode.EXITED, 0).uid is None
    assert ChildEvent.from_wait_status(1, 0).uid is None


def test_child_event_str() -> None:
    cases = [
        (ChildEvent(12, EventCode.EXITED, 0), "[12] exited with status 0"),
        (ChildEvent(12, EventCode.EXITED, 3, uid=1000), "[12] exited with status 3"),
        (ChildEvent(12, EventCode.KILLED, signal.SIGKILL), "[12] killed by SIGKILL"),
        (ChildEvent(12, EventCode.DUMPED, signal.SIGSEGV), "[12] killed by SIGSEGV (core dumped)"),
        (ChildEvent(12, EventCode.STOPPED, signal.SIGTSTP), "[12] stopped by SIGTSTP"),
        (ChildEvent(12, EventCode.CONTINUED, 0), "[12] continued"),
    ]
    for event, text in cases:
        assert str(event) == text


def test_child_event_str_is_describe_status() -> None:
    for ws, _, _ in ALL_WAIT_STATUSES:
        assert str(ChildEvent.from_wait_status(99, ws)) == f"[99] {describe_status(ws)}"


def test_child_event_is_a_frozen_value() -> None:
    event = ChildEvent(1, EventCode.EXITED, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.status = 1  # type: ignore[misc]
    assert event == ChildEvent(1, EventCode.EXITED, 0)
    assert event != ChildEvent(1, EventCode.EXITED, 0, uid=0)
    assert len({event, ChildEvent(1, EventCode.EXITED, 0)}) == 1


def _macros_accept(ws: int) -> bool:
    return os.WIFEXITED(ws) or os.WIFSIGNALED(ws) or os.WIFSTOPPED(ws) or os.WIFCONTINUED(ws)


def test_from_wait_status_rejects_garbage() -> None:
    # Low byte 0xff is no status: not exited (low 7 bits != 0), not signalled
    # (low 7 bits == 0x7f), not stopped (low byte != 0x7f), not continued (!= 0xffff).
    for ws in (0x00FF, 0x01FF, 0x7FFF, 0xFEFF, 0x1FFFF, -1):
        assert not _macros_accept(ws), hex(ws)
        with pytest.raises(ValueError, match="not a wait status"):
            ChildEvent.from_wait_status(1, ws)


def test_from_wait_status_agrees_with_the_macros_on_every_16_bit_int() -> None:
    rejected = 0
    for ws in range(0x10000):
        if not _macros_accept(ws):
            rejected += 1
            with pytest.raises(ValueError):
                ChildEvent.from_wait_status(1, ws)
            continue
        event = ChildEvent.from_wait_status(1, ws)
        if os.WIFEXITED(ws):
            assert (event.code, event.status) == (EventCode.EXITED, os.WEXITSTATUS(ws))
        elif os.WIFSIGNALED(ws):
            code = EventCode.DUMPED if os.WCOREDUMP(ws) else EventCode.KILLED
            assert (event.code, event.status) == (code, os.WTERMSIG(ws))
        elif os.WIFSTOPPED(ws):
            assert (event.code, event.status) == (EventCode.STOPPED, os.WSTOPSIG(ws))
        else:
            assert (event.code, event.status) == (EventCode.CONTINUED, 0)
        # wait_status is a canonical form: decoding it again gives the same event.
        assert ChildEvent.from_wait_status(1, event.wait_status) == event
    # Exactly the statuses with low byte 0xff, except 0xffff (continued).
    assert rejected == 255


def test_from_wait_status_outside_c_int() -> None:
    # os.W*() take a C int: beyond it, the error is OverflowError, not ValueError.
    for ws in (2**31, 2**40, -(2**31) - 1):
        with pytest.raises((ValueError, OverflowError)):
            ChildEvent.from_wait_status(1, ws)


# -- against the kernel --------------------------------------------------------


def _fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child()
        finally:
            os._exit(127)
    return pid


def _peek_then_reap(pid: int, peek_flags: int, wait_flags: int) -> tuple[int, int]:
    """(status built from waitid(WNOWAIT), status from waitpid) for the same state change."""
    info = os.waitid(os.P_PID, pid, peek_flags | os.WNOWAIT)
    assert info is not None
    assert info.si_pid == pid
    from_siginfo = status_from_siginfo(info.si_code, info.si_status)
    rpid, status = os.waitpid(pid, wait_flags)
    assert rpid == pid
    return from_siginfo, status


def test_status_from_siginfo_matches_waitpid_for_real_children() -> None:
    def exit_with(code: int) -> Callable[[], None]:
        return lambda: os._exit(code)

    def kill_self(signo: int) -> Callable[[], None]:
        def child() -> None:
            if signo != signal.SIGKILL:  # SIGKILL's disposition cannot be set
                signal.signal(signo, signal.SIG_DFL)
            os.kill(os.getpid(), signo)

        return child

    cases: list[tuple[Callable[[], None], str]] = [
        (exit_with(0), "exited with status 0"),
        (exit_with(3), "exited with status 3"),
        (exit_with(255), "exited with status 255"),
        (kill_self(signal.SIGKILL), "killed by SIGKILL"),
        (kill_self(signal.SIGTERM), "killed by SIGTERM"),
    ]
    pids: list[int] = []
    try:
        for child, text in cases:
            pid = _fork(child)
            pids.append(pid)
            from_siginfo, status = _peek_then_reap(pid, os.WEXITED, 0)
            pids.remove(pid)
            assert from_siginfo == status, (text, hex(from_siginfo), hex(status))
            assert describe_status(status) == text

        # Stopped, then continued, then exited: one child through three state changes.
        # It exits only when told: an exit between the peek and the reap of
        # "continued" would make waitpid report the exit instead.
        go_r, go_w = os.pipe()

        def stop_then_exit() -> None:
            os.kill(os.getpid(), signal.SIGSTOP)
            os.read(go_r, 1)
            os._exit(5)

        try:
            pid = _fork(stop_then_exit)
            pids.append(pid)
            from_siginfo, status = _peek_then_reap(pid, os.WSTOPPED, os.WUNTRACED)
            assert from_siginfo == status == stopped(signal.SIGSTOP)
            os.kill(pid, signal.SIGCONT)
            from_siginfo, status = _peek_then_reap(pid, os.WCONTINUED, os.WCONTINUED)
            assert from_siginfo == status == CONTINUED
            os.write(go_w, b"x")
        finally:
            os.close(go_r)
            os.close(go_w)
        from_siginfo, status = _peek_then_reap(pid, os.WEXITED, 0)
        pids.remove(pid)
        assert from_siginfo == status == exited(5)
    finally:
        for pid in pids:  # only on failure: never leave a child behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def test_childproc_reaped_rejects_a_garbage_status_with_invalid_argument_error() -> None:
    # Regression: 0 <= status <= 0xffff was the only check, so 0xff reached
    # ChildEvent.from_wait_status and escaped as a bare ValueError.
    ctx = childproc.Context()
    pid = 0
    try:
        ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner.MAINLOOP))
        pid = ctx.child_fork(lambda _pid, _status: None)
        if pid == 0:  # pragma: no cover - runs in the child
            os._exit(0)
        rpid, status = os.waitpid(pid, 0)
        assert (rpid, status) == (pid, 0)
        try:
            with pytest.raises(childproc.InvalidArgumentError):
                ctx.childproc_reaped(pid, 0x00FF)
        finally:
            # Whatever the garbage did, the real status is still accepted.
            assert ctx.childproc_reaped(pid, status) is True
    finally:
        ctx.close()
