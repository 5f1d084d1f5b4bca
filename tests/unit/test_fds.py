"""fd hygiene of :mod:`childproc._fds`: never at 0-2, never closing a stranger's fd."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from childproc._fds import CLOSED, OTHER, OURS, above_stdio, close_if_ours, identify, pid_of_pidfd, still_ours


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def same_object(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@contextmanager
def stdio_closed(*fds: int) -> Iterator[None]:
    """Close some of fds 0-2 for the block, then put the real ones back (pytest's
    capture included). Nothing may write to them meanwhile."""
    saved = {fd: os.dup(fd) for fd in fds}
    try:
        for fd in fds:
            os.close(fd)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd, inheritable=True)
            os.close(copy)


@contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


# -- above_stdio ---------------------------------------------------------------------


def test_above_stdio_keeps_a_high_fd() -> None:
    with pipe() as (r, _):
        assert r > 2
        os.set_inheritable(r, True)
        assert above_stdio(r) == r
        assert is_open(r)
        assert not cloexec(r)  # left alone entirely


@pytest.mark.parametrize("low", [0, 1, 2])
def test_above_stdio_moves_a_low_fd_up(low: int) -> None:
    moved = -1
    with stdio_closed(low):
        fd = os.open(os.devnull, os.O_RDONLY)  # the lowest free number: `low`
        try:
            assert fd == low
            ino = os.fstat(fd).st_ino
            moved = above_stdio(fd)
            assert moved > 2
            assert not is_open(low)  # the low number is free again for the host
            assert os.fstat(moved).st_ino == ino  # the same open file
            assert cloexec(moved)
        finally:
            if is_open(low):
                os.close(low)
            if moved > 2:
                os.close(moved)
    assert is_open(low)  # put back


def test_above_stdio_with_all_of_stdio_closed() -> None:
    fds: list[int] = []
    with stdio_closed(0, 1, 2):
        try:
            r, w = os.pipe()
            fds += [r, w]
            extra = os.open(os.devnull, os.O_RDONLY)
            fds.append(extra)
            assert sorted(fds) == [0, 1, 2]
            fds = [above_stdio(fd) for fd in fds]
            assert all(fd > 2 for fd in fds)
            assert len(set(fds)) == 3
            assert not any(is_open(low) for low in (0, 1, 2))
            r, w, extra = fds
            os.write(w, b"x")  # the pipe still works through the new numbers
            assert os.read(r, 1) == b"x"
            assert all(cloexec(fd) for fd in fds)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def test_above_stdio_of_a_closed_low_fd_raises() -> None:
    # A low number that is not open: an OSError, and nothing is opened.
    with stdio_closed(0):
        with pytest.raises(OSError):
            above_stdio(0)
        assert not is_open(0)


# -- identify / still_ours / close_if_ours ------------------------------------------------


def test_identify_a_pipe() -> None:
    with pipe() as (r, w):
        ident = identify(r)
        st = os.fstat(r)
        assert ident == (st.st_dev, st.st_ino, stat.S_IFIFO, 0)
        assert still_ours(r, ident)
        # Both ends of one pipe are the same inode: the type and inode do not tell them apart.
        assert identify(w)[:3] == ident[:3]


def test_a_reused_number_is_not_ours() -> None:
    with pipe() as (r, _), pipe() as (r2, _):
        ident = identify(r)
        os.close(r)
        assert not still_ours(r, ident)  # closed
        os.dup2(r2, r)  # the host opens something that lands on the freed number
        try:
            assert not still_ours(r, ident)  # another pipe: another inode
            assert close_if_ours(r, ident) == OTHER
            assert is_open(r)  # the stranger was not closed
            assert same_object(r, r2)
        finally:
            os.close(r)


def test_a_number_reused_by_another_kind_of_file_is_not_ours() -> None:
    with pipe() as (r, _):
        ident = identify(r)
        os.close(r)
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            if fd != r:
                os.dup2(fd, r)
                os.close(fd)
            assert not still_ours(r, ident)
            assert close_if_ours(r, ident) == OTHER
            assert is_open(r)
        finally:
            os.close(r)


def test_close_if_ours_closes_our_fd() -> None:
    with pipe() as (r, w):
        ident = identify(w)
        assert close_if_ours(w, ident) == OURS
        assert not is_open(w)
        # Closed already: nothing to close, whatever the identity.
        assert close_if_ours(w, ident) == CLOSED
        assert close_if_ours(w, None) == CLOSED
        assert is_open(r)


def test_close_if_ours_without_identity_always_closes() -> None:
    with pipe() as (r, _):
        assert close_if_ours(r, None) == OURS
        assert not is_open(r)


def test_a_duplicate_onto_the_same_number_is_still_ours() -> None:
    # Same open file description under the same number: it is what was opened.
    with pipe() as (r, _):
        ident = identify(r)
        copy = os.dup(r)
        os.close(r)
        os.dup2(copy, r)
        os.close(copy)
        assert still_ours(r, ident)


# -- pidfds ------------------------------------------------------------------------------


@contextmanager
def sleeping_child() -> Iterator[int]:
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], dict(os.environ))
    try:
        yield pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_pid_of_pidfd_for_a_real_child() -> None:
    with sleeping_child() as pid:
        fd = os.pidfd_open(pid)
        try:
            assert pid_of_pidfd(fd) == pid
            ident = identify(fd, pid)
            assert still_ours(fd, ident)
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT)
            assert pid_of_pidfd(fd) == pid  # a zombie keeps its pid
            os.waitpid(pid, 0)
            assert pid_of_pidfd(fd) == -1  # reaped
            assert still_ours(fd, ident)  # a reaped child's pidfd is still ours
            assert close_if_ours(fd, ident) == OURS
            fd = -1
        finally:
            if fd >= 0:
                os.close(fd)


def test_pid_of_pidfd_of_other_fds() -> None:
    with pipe() as (r, w):
        assert pid_of_pidfd(r) is None
        os.close(w)
        assert pid_of_pidfd(w) is None  # closed


def test_pidfd_replaced_by_a_pidfd_for_another_process() -> None:
    with sleeping_child() as pid, sleeping_child() as other:
        fd = os.pidfd_open(pid)
        stranger = os.pidfd_open(other)
        try:
            ident = identify(fd, pid)
            os.dup2(stranger, fd)  # a host's pidfd lands on our number
            assert pid_of_pidfd(fd) == other
            assert not still_ours(fd, ident)
            assert close_if_ours(fd, ident) == OTHER
            assert is_open(fd)
        finally:
            os.close(fd)
            os.close(stranger)


def test_pidfd_replaced_by_a_pipe() -> None:
    with sleeping_child() as pid, pipe() as (r, _):
        fd = os.pidfd_open(pid)
        try:
            ident = identify(fd, pid)
            os.dup2(r, fd)
            assert not still_ours(fd, ident)
            assert close_if_ours(fd, ident) == OTHER
            assert is_open(fd)
        finally:
            os.close(fd)


def test_identify_without_pid_is_a_plain_identity() -> None:
    with sleeping_child() as pid:
        fd = os.pidfd_open(pid)
        try:
            assert identify(fd)[3] == 0
            assert identify(fd, pid)[3] in (0, pid)  # 0 where pidfds have inodes of their own
        finally:
            os.close(fd)
