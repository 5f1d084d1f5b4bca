"""childproc inside a Twisted reactor, beside ``reactor.spawnProcess``.

Twisted owns SIGCHLD while its reactor runs (it installs a handler and then
checks each of its own processes with ``waitpid(pid, WNOHANG)``: it never
takes other code's children). So childproc must not install a handler there:
the adapter uses PIDFD (or SELECTIVE_REAP with pidfds, which needs none) and
registers the context's fd with ``reactor.addReader``::

    from twisted.internet import reactor
    ctx = childproc.twisted_host.TwistedContext(reactor)
    d = ctx.spawn(["/bin/sh", "-c", "exit 3"]).deferred   # fires with a ChildEvent

Without pidfds there is no safe mode inside a running Twisted reactor (its
handler would conflict), and the constructor says so. Requires the ``twisted``
extra: ``pip install childproc[twisted]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._child import Child, EventCallback
from ._context import Context, Hooks
from ._errors import ClosedError, PidfdUnavailableError
from ._policy import SigchldOwner
from ._spawn import Argv
from ._status import ChildEvent
from ._watchers import pidfd as _pidfd

__all__ = ["TwistedChild", "TwistedContext"]

_log = Logger(namespace="childproc")


class TwistedChild:
    """A child whose exit fires :attr:`deferred` with its final :class:`~childproc.ChildEvent`."""

    __slots__ = ("child", "deferred")

    def __init__(self, child: Child) -> None:
        self.child = child
        self.deferred: Deferred[ChildEvent] = Deferred()

    @property
    def pid(self) -> int:
        return self.child.pid


@implementer(IReadDescriptor)
class _Reader:
    def __init__(self, owner: TwistedContext) -> None:
        self._owner = owner

    def fileno(self) -> int:
        return self._owner.context.fileno()

    def doRead(self) -> None:
        try:
            self._owner.context.dispatch()
        except Exception:
            _log.failure("a childproc callback raised")

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "childproc"


class TwistedContext:
    """A :class:`~childproc.Context` whose fd a Twisted reactor watches."""

    def __init__(self, reactor: Any, mode: SigchldOwner | None = None) -> None:
        if mode is None:
            if not _pidfd.supported():
                raise PidfdUnavailableError(
                    "inside a Twisted reactor childproc needs pidfds: Twisted owns SIGCHLD, so the "
                    "modes that use a handler would conflict with it"
                )
            mode = SigchldOwner.PIDFD
        self.reactor: Any = reactor  # IReactorFDSet
        self.context = Context()
        try:
            self.context.setmode(Hooks(chldowner=mode))
        except BaseException:
            self.context.close()
            raise
        self._waiters: dict[int, tuple[TwistedChild, EventCallback | None]] = {}
        self._reader = _Reader(self)
        self.reactor.addReader(self._reader)

    def _on_event(self, child: Child, event: ChildEvent) -> None:
        entry = self._waiters.get(child.pid)
        if entry is None:
            return
        waiter, user = entry
        if event.terminal:
            del self._waiters[child.pid]
        if user is not None:
            user(child, event)
        if event.terminal:
            waiter.deferred.callback(event)

    def _wrap(self, child: Child, on_event: EventCallback | None) -> TwistedChild:
        waiter = TwistedChild(child)
        self._waiters[child.pid] = (waiter, on_event)
        return waiter

    def spawn(
        self,
        argv: Argv,
        *,
        on_event: EventCallback | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        kill_on_close: bool = False,
    ) -> TwistedChild:
        """:meth:`Context.spawn`; the result's ``deferred`` fires at the exit."""
        child = self.context.spawn(
            argv,
            self._on_event,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            kill_on_close=kill_on_close,
        )
        return self._wrap(child, on_event)

    def close(self) -> None:
        """Stop watching (``removeReader``) and close the context. Pending deferreds
        errback with :class:`~childproc.ClosedError`."""
        self.reactor.removeReader(self._reader)
        self.context.close()
        waiters, self._waiters = self._waiters, {}
        for waiter, _ in waiters.values():
            waiter.deferred.errback(ClosedError("the childproc context was closed before the child exited"))
