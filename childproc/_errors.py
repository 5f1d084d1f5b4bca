"""The exceptions childproc raises. Every one derives from :class:`ChildprocError`."""

from __future__ import annotations

import errno

__all__ = [
    "ChildprocError",
    "InvalidArgumentError",
    "StateError",
    "SigchldConflictError",
    "HandlerReplacedError",
    "ForkError",
    "ClosedError",
    "ForkedContextError",
    "ChildStolenError",
    "SpawnError",
    "ChildExitedError",
    "UnknownChildError",
    "AlreadyWatchedError",
    "NotOurChildError",
    "PidfdUnavailableError",
    "SigchldIgnoredError",
    "FdLostError",
    "ArgumentTypeError",
    "UnknownEncodingError",
    "SpawnFileNotFoundError",
    "SpawnPermissionError",
    "SpawnNotADirectoryError",
    "spawn_error",
]


class ChildprocError(Exception):
    """Base class of every error childproc raises."""


class InvalidArgumentError(ChildprocError, ValueError):
    """An argument has the wrong type or value; the message says what is expected."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (also a :class:`TypeError`, as ``subprocess`` raises)."""


class UnknownEncodingError(InvalidArgumentError, LookupError):
    """``encoding=`` names no codec Python knows; no child was started. Also a
    :class:`LookupError`, as ``Popen`` raises."""


class StateError(ChildprocError):
    """The call does not fit the context's mode or state (e.g. ``setmode`` with
    children outstanding, ``childproc_reaped`` outside MAINLOOP)."""


class SigchldConflictError(ChildprocError):
    """Someone else owns SIGCHLD: childproc will not replace their handler."""

    def __init__(self, message: str, handler: object = None) -> None:
        super().__init__(message)
        #: The handler found in place of childproc's.
        self.handler = handler


class SigchldIgnoredError(SigchldConflictError):
    """SIGCHLD is ignored (``SIG_IGN``, or ``SA_NOCLDWAIT``): the kernel throws every
    child's exit status away, so a mode that leaves the disposition alone cannot
    report exits. The message names the ways out."""


class HandlerReplacedError(SigchldConflictError):
    """childproc's SIGCHLD handler was replaced behind its back while in use."""


class ForkError(ChildprocError, OSError):
    """``fork()`` (or the ``fork_replacement`` hook) failed. ``errno`` says why.

    Nothing is left behind: no registry entry, and no handler that was
    installed only for this child.
    """


class ClosedError(StateError):
    """The context was closed."""


class ForkedContextError(StateError):
    """The context was inherited through ``fork()``: it belongs to the parent.

    Make a new :class:`~childproc.Context` in the child instead.
    """


class ChildStolenError(ChildprocError):
    """A child of ours was reaped by someone else, so its exit status is lost.

    This means a host broke its mode's promise (for example it called
    ``waitpid(-1)`` while childproc was in SELECTIVE_REAP or LIBXL mode).
    """

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        #: The pid whose status was taken by someone else.
        self.pid = pid


class SpawnError(ForkError):
    """``posix_spawn`` failed (for example ``ENOENT``: no such program). ``errno`` says why.

    A missing program or directory is also a :class:`FileNotFoundError`, one that
    may not be run a :class:`PermissionError`, a ``cwd`` that is not a directory a
    :class:`NotADirectoryError`, each with ``filename`` set, as ``subprocess``
    raises them: code ported from ``subprocess`` keeps catching them.
    """


# What spawn_error() raises: a SpawnError that is also the OSError subclass Python
# raises for the same errno. Public (childproc.SpawnFileNotFoundError ...), so a
# traceback names them plainly; catch SpawnError or the built-in class.
class SpawnFileNotFoundError(SpawnError, FileNotFoundError):
    """A :class:`SpawnError` for a missing program or ``cwd`` (``ENOENT``)."""


class SpawnPermissionError(SpawnError, PermissionError):
    """A :class:`SpawnError` for a program or ``cwd`` that may not be used (``EACCES``, ``EPERM``)."""


class SpawnNotADirectoryError(SpawnError, NotADirectoryError):
    """A :class:`SpawnError` for a ``cwd`` (or a path in it) that is not a directory (``ENOTDIR``)."""


_SPAWN_ERRORS = {
    errno.ENOENT: SpawnFileNotFoundError,
    errno.EACCES: SpawnPermissionError,
    errno.EPERM: SpawnPermissionError,
    errno.ENOTDIR: SpawnNotADirectoryError,
}


def spawn_error(err: int, message: str, filename: str | bytes | None = None) -> SpawnError:
    """The :class:`SpawnError` for ``err``: also the ``OSError`` subclass Python
    itself would raise for it (``FileNotFoundError`` for ENOENT …)."""
    cls = _SPAWN_ERRORS.get(err, SpawnError)
    if filename is None:
        return cls(err, message)
    return cls(err, message, filename)


class ChildExitedError(StateError, ProcessLookupError):
    """The child's exit was already seen: it cannot be signalled any more.

    childproc refuses rather than call ``kill()`` on a pid that may by now name
    another process. Also a :class:`ProcessLookupError`, as asyncio's
    ``Process.send_signal`` raises for a process that has exited.
    """


class UnknownChildError(ChildprocError, LookupError):
    """No running child of this context has that pid."""


class AlreadyWatchedError(StateError):
    """The pid is already watched by a childproc context (sd-event's ``-EBUSY``)."""


class NotOurChildError(InvalidArgumentError):
    """The pid is not a child of this process, or was already reaped (``-ECHILD``)."""


class FdLostError(StateError):
    """Someone else closed an fd childproc opened (a child's pidfd): childproc left
    the number alone (it may name another object now) and watches the child by
    pid, which is still safe while childproc is its only reaper."""

    def __init__(self, message: str, pids: list[int]) -> None:
        super().__init__(message)
        #: The children whose pidfd was lost.
        self.pids = pids


class PidfdUnavailableError(StateError):
    """The PIDFD mode needs pidfds (Linux >= 5.3, not blocked by seccomp); this system has none."""


# Every exception here is public: shown (by tracebacks, pickle, the docs) where users import it.
for _cls in [c for c in tuple(globals().values()) if isinstance(c, type) and issubclass(c, ChildprocError)]:
    _cls.__module__ = "childproc"
