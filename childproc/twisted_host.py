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

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._bridge import Bridge, WaiterBase
from ._child import Child
from ._context import Context, Hooks
from ._errors import PidfdUnavailableError
from ._policy import SigchldOwner
from ._status import ChildEvent
from ._watchers import pidfd as _pidfd

__all__ = ["TwistedChild", "TwistedContext"]

_log = Logger(namespace="childproc")


class TwistedChild(WaiterBase):
    """A child whose exit fires :attr:`deferred` with its final :class:`~childproc.ChildEvent`."""

    __slots__ = ("deferred",)

    def __init__(self, child: Child) -> None:
        super().__init__(child)
        self.deferred: Deferred[ChildEvent] = Deferred()


@implementer(IReadDescriptor)
class _Reader:
    def __init__(self, owner: TwistedContext) -> None:
        self._owner = owner

    def fileno(self) -> int:
        return self._owner.context.fileno()

    def doRead(self) -> None:
        try:
            self._owner._dispatch()
        except Exception:
            _log.failure("a childproc callback raised")

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "childproc"


class TwistedContext(Bridge[TwistedChild]):
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
        context = Context()
        try:
            context.setmode(Hooks(chldowner=mode))
        except BaseException:
            context.close()
            raise
        super().__init__(context)
        self._reader = _Reader(self)
        self.reactor.addReader(self._reader)

    def _new_waiter(self, child: Child) -> TwistedChild:
        return TwistedChild(child)

    def _finish(self, waiter: TwistedChild, event: ChildEvent) -> None:
        waiter.deferred.callback(event)

    def _fail(self, waiter: TwistedChild, error: BaseException) -> None:
        waiter.deferred.errback(error)

    def close(self) -> None:
        """Stop watching (``removeReader``) and close the context. Pending deferreds
        errback with :class:`~childproc.ClosedError`."""
        self.reactor.removeReader(self._reader)
        self.context.close()
        self._fail_all()
