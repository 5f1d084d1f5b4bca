"""Wait statuses: :func:`describe_status` and :func:`status_from_siginfo`."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from childproc._status import (
    CLD_CONTINUED,
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    CLD_STOPPED,
    CLD_TRAPPED,
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


@pytest.mark.parametrize(
    ("status", "text"),
    [
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
    ],
)
def test_describe_status(status: int, text: str) -> None:
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


@pytest.mark.parametrize("code", [0, 7, -1, 128])
def test_siginfo_unknown_code_examples(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        status_from_siginfo(code, 0)


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
        def stop_then_exit() -> None:
            os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(5)

        pid = _fork(stop_then_exit)
        pids.append(pid)
        from_siginfo, status = _peek_then_reap(pid, os.WSTOPPED, os.WUNTRACED)
        assert from_siginfo == status == stopped(signal.SIGSTOP)
        os.kill(pid, signal.SIGCONT)
        from_siginfo, status = _peek_then_reap(pid, os.WCONTINUED, os.WCONTINUED)
        assert from_siginfo == status == CONTINUED
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
