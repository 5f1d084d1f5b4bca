"""How a child comes to be: fork, posix_spawn, or adoption, each as a small creator.

A creator checks its arguments before anything happens and then gives the
context one C-level callable taking no argument that makes (or names) the
child and returns its pid (0 in a forked child). The context calls it as
``record.extend(itertools.starmap(call, ((),)))``: the pid travels from the
system call into the context's record of the start inside C, so an exception
a signal handler raises (a ``KeyboardInterrupt``) cannot come between the
child's birth and childproc knowing its pid.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ._errors import ForkError, InvalidArgumentError, NotOurChildError, SpawnError, spawn_error
from ._fds import pid_of_pidfd
from ._spawn import prepare_spawn, refused

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["Adopt", "Creator", "Fork", "Spawn"]


class Creator:
    """What the context needs from a way of making a child."""

    #: Names the system call in errors.
    what = "fork"
    #: The child exists already (its pid is known before the call).
    adopting = False

    def prepare(self) -> Callable[[], int]:
        """Check everything; return the C-level call that makes the child."""
        raise NotImplementedError

    def error(self, exc: OSError) -> ForkError:
        """The library's error for the call's ``OSError``."""
        return ForkError(exc.errno or errno.EAGAIN, f"{self.what} failed: {exc.strerror or exc}")

    def check_pid(self, pid: object) -> int:
        """The pid the call returned, checked."""
        return pid  # type: ignore[return-value]

    def refused(self, exc: TypeError | ValueError) -> BaseException:
        """What to raise for the call's ``TypeError`` or ``ValueError`` (by default,
        the exception itself: a fork_replacement's own)."""
        return exc


class Fork(Creator):
    """``os.fork()``, or the application's ``fork_replacement(user)``."""

    def __init__(self, replacement: Callable[[Any], int] | None, user: Any) -> None:
        self._replacement = replacement
        self._user = user

    def prepare(self) -> Callable[[], int]:
        if self._replacement is None:
            return os.fork  # (looked up each time: gevent and tests patch it)
        return partial(self._replacement, self._user)

    def check_pid(self, pid: object) -> int:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise InvalidArgumentError(
                f"fork_replacement must return a pid (int >= 0) or raise OSError, not {pid!r}"
            )
        return pid


class Spawn(Creator):
    """``posix_spawn``: no copy of the interpreter (see :mod:`childproc._spawn`)."""

    what = "posix_spawn"

    def __init__(self, argv: Argv, **options: Any) -> None:
        """``options``: :func:`childproc._spawn.prepare_spawn`'s keywords."""
        self._argv = argv
        self._options = options

    def prepare(self) -> Callable[[], int]:
        try:
            return prepare_spawn(self._argv, **self._options)
        except OSError as exc:
            raise self.error(exc) from exc

    def refused(self, exc: TypeError | ValueError) -> BaseException:
        return refused(exc, self._options.get("env"))

    def error(self, exc: OSError) -> SpawnError:
        argv = self._argv
        filename = exc.filename
        if filename is None and isinstance(argv, Sequence) and argv and not isinstance(argv, (str, bytes)):
            filename = argv[0]
        if isinstance(filename, os.PathLike):
            filename = os.fspath(filename)
        err = exc.errno or errno.EAGAIN
        why = exc.strerror or str(exc)
        if err not in _ABOUT_A_FILE:  # (EMFILE, ENOMEM, EAGAIN: this process's resources)
            return spawn_error(err, f"cannot start the child: {why}", filename)
        cwd = self._options.get("cwd")
        what = "the cwd" if cwd is not None and filename == os.fspath(cwd) else "the program"
        return spawn_error(err, f"cannot start the child: {why} ({what})", filename)


#: The errors of ``posix_spawn`` that are about the program or the cwd named.
_ABOUT_A_FILE = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.ENOEXEC,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ETXTBSY,
    }
)


class Adopt(Creator):
    """A child this process made some other way: the call only names its pid."""

    what = "adopt"
    adopting = True

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @classmethod
    def from_args(cls, pid: int | None, pidfd: int | None, own_pidfd: bool) -> tuple[Adopt, int | None]:
        """``adopt()``'s arguments checked: the creator, and the pidfd childproc is to
        own (``pidfd`` itself, or a duplicate with ``own_pidfd=False``; the caller
        closes a duplicate if the adoption fails)."""
        if (pid is None) == (pidfd is None):
            raise InvalidArgumentError("adopt() takes exactly one of pid= and pidfd=")
        fd: int | None = None
        if pidfd is not None:
            if not isinstance(pidfd, int) or isinstance(pidfd, bool) or pidfd < 0:
                raise InvalidArgumentError(f"pidfd must be a file descriptor, not {pidfd!r}")
            found = pid_of_pidfd(pidfd)
            if found is None:
                raise InvalidArgumentError(f"fd {pidfd} is not a pidfd")
            if found <= 0:
                raise NotOurChildError(f"the process of pidfd {pidfd} has already exited and been reaped")
            pid = found
            fd = pidfd if own_pidfd else os.dup(pidfd)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            if fd is not None and fd != pidfd:
                os.close(fd)
            raise InvalidArgumentError(f"adopt() needs a child's pid (> 1), not {pid!r}")
        return cls(pid), fd

    def prepare(self) -> Callable[[], int]:
        return itertools.repeat(self.pid).__next__
