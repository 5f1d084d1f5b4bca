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

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._bridge import Bridge, WaiterBase, settle, stop
from ._child import Child
from ._context import Context, Hooks
from ._errors import PidfdUnavailableError
from ._policy import SigchldOwner
from ._pump import Driver, Pump
from ._results import CompletedProcess, TimeoutExpired
from ._run import RunRequest, kill, result
from ._status import ChildEvent
from ._stdio import command_of
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["TwistedChild", "TwistedContext"]

_log = Logger(namespace="childproc")


class TwistedChild(WaiterBase):
    """A child whose exit fires :attr:`deferred` with its final :class:`~childproc.ChildEvent`."""

    __slots__ = ("_reactor", "deferred")

    def __init__(self, child: Child, reactor: Any = None) -> None:
        super().__init__(child)
        self.deferred: Deferred[ChildEvent] = Deferred()
        self._reactor = reactor

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> Deferred[ChildEvent | None]:
        """:meth:`Child.stop <childproc.Child.stop>` in the reactor: ``sig`` (to the
        tree, if the child has one), up to ``grace`` seconds for the exit (and a
        cgroup tree's last process), then SIGKILL: a ``Deferred`` of the final event."""
        sleep = _sleep_in(self._reactor)
        return Deferred.fromCoroutine(stop(self.child, grace, sig, sleep, (CancelledError,)))


def _sleep_in(reactor: Any) -> Callable[[float], Deferred[None]]:
    """An awaitable sleep in ``reactor``, for the shared coroutines (``stop``, ``settle``)."""
    return lambda seconds: deferLater(reactor, seconds, lambda: None)


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
                    "inside a Twisted reactor childproc needs pidfds (Linux >= 5.3, not blocked by "
                    "seccomp): Twisted owns SIGCHLD, so the modes that use a handler would conflict "
                    "with it. Pass mode=SigchldOwner.MAINLOOP and report what Twisted reaps, or run "
                    "where pidfds work"
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
        return TwistedChild(child, self.reactor)

    def _finish(self, waiter: TwistedChild, event: ChildEvent) -> None:
        waiter.deferred.callback(event)

    def _fail(self, waiter: TwistedChild, error: BaseException) -> None:
        waiter.deferred.errback(error)

    def run(self, argv: Argv, **options: Any) -> Deferred[CompletedProcess]:
        """:meth:`Context.run <childproc.Context.run>` in the reactor: a ``Deferred``
        that fires with the :class:`~childproc.CompletedProcess` (or fails with the
        same exceptions). A timeout, or cancelling the ``Deferred``, kills the child
        (SIGKILL), waits for its exit and closes its pipes first."""
        req = RunRequest(options)
        waiter = self.spawn(argv, **req.spawn_options)
        return _Run(self.reactor, waiter, req).deferred

    def close(self) -> None:
        """Stop watching (``removeReader``) and close the context. Pending deferreds
        errback with :class:`~childproc.ClosedError`."""
        self.reactor.removeReader(self._reader)
        self.context.close()
        self._fail_all()


@implementer(IReadDescriptor, IWriteDescriptor)
class _Fd:
    """One pipe end as the reactor sees it: calls ``callback(*args)`` when ready."""

    def __init__(self, fd: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._fd, self._callback, self._args = fd, callback, args

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._callback(*self._args)

    doWrite = doRead

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "childproc-pipe"


class _Readiness:
    """What :class:`~childproc._pump.Driver` needs, from a Twisted reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._fds: dict[tuple[int, bool], _Fd] = {}

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._fds[fd, False] = reader = _Fd(fd, callback, args)
        self._reactor.addReader(reader)

    def remove_reader(self, fd: int) -> None:
        reader = self._fds.pop((fd, False), None)
        if reader is not None:
            self._reactor.removeReader(reader)

    def add_writer(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._fds[fd, True] = writer = _Fd(fd, callback, args)
        self._reactor.addWriter(writer)

    def remove_writer(self, fd: int) -> None:
        writer = self._fds.pop((fd, True), None)
        if writer is not None:
            self._reactor.removeWriter(writer)

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Call:
        return _Call(self._reactor.callLater(delay, callback))


class _Call:
    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class _Run:
    """One ``TwistedContext.run``: the driver on the pipes, the exit from the child's
    deferred, and the kill for a timeout or a cancellation."""

    def __init__(self, reactor: Any, waiter: TwistedChild, req: RunRequest) -> None:
        self.reactor, self.waiter, self.check, self.timeout = reactor, waiter, req.check, req.timeout
        self.deferred: Deferred[CompletedProcess] = Deferred(self._cancel)
        self.failure: BaseException | None = None
        self.output_done = False
        self.finished = False
        child = waiter.child
        io_ = child._io
        self.pump = Pump(io_, child.args, child.pid) if io_ is not None and io_.pipes is not None else None
        self.driver: Driver | None = None
        if self.pump is not None:
            self.pump.io.lock.acquire()  # (a new child's: free) while the pump watches its pipes
            try:
                self.pump.start(req.input)
            except BaseException:
                self.pump.io.lock.release()
                kill(child)
                raise
            self.driver = Driver(self.pump, _Readiness(reactor), lambda: waiter.deferred.called, self._output)
        self.timer = reactor.callLater(req.timeout, self._timed_out) if req.timeout is not None else None
        waiter.deferred.addBoth(self._exited)
        if self.driver is not None:
            self.driver.start()
        else:
            self.output_done = True

    def _exited(self, outcome: Any) -> None:
        if isinstance(outcome, Failure) and self.failure is None:
            self.failure = outcome.value  # (the context closed, or the status was lost)
            self._stop_output()
        if self.driver is not None:
            self.driver.poke()
        self._maybe_done()
        # (the child's deferred is ours: its result is handed on below)

    def _output(self, exc: BaseException | None) -> None:
        self.output_done = True
        if exc is not None and self.failure is None:
            self.failure = exc
            kill(self.waiter.child)
        self._maybe_done()

    def _timed_out(self) -> None:
        self.timer = None
        if self.failure is None:
            assert self.timeout is not None
            self.failure = (
                self.pump.timed_out(self.timeout)
                if self.pump is not None
                else TimeoutExpired(command_of(self.waiter.child.args), self.timeout, pid=self.waiter.pid)
            )
            self._stop_output()
            kill(self.waiter.child)

    def _cancel(self, _: Deferred[CompletedProcess]) -> None:
        if self.failure is None:
            self.failure = CancelledError()
            self._stop_output()
            kill(self.waiter.child)

    def _stop_output(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        self.output_done = True

    def _maybe_done(self) -> None:
        child = self.waiter.child
        if self.finished or not (self.output_done and self.waiter.deferred.called):
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.driver is not None:
            self.driver.stop()
        out = err = None
        if self.pump is not None:
            out, err = self.pump.finish()
            self.pump.io.lock.release()
        if child._io is not None:
            child._io.close()
        if self.failure is None or child._tree is None:
            self._report(out, err)
            return
        # Killed: what is left of its tree, then its cgroup, without blocking the reactor.
        settled = Deferred.fromCoroutine(settle(child._tree, True, _sleep_in(self.reactor)))
        settled.addBoth(self._report_after, out, err)

    def _report_after(self, outcome: object, out: Any, err: Any) -> object:
        self._report(out, err)
        return outcome  # (a settle that raised stays this Deferred's failure: Twisted logs it)

    def _report(self, out: Any, err: Any) -> None:
        child = self.waiter.child
        if self.deferred.called:  # cancelled: Twisted failed it with CancelledError already
            return
        failure = self.failure
        if isinstance(failure, TimeoutExpired):
            failure.event = child.final
        if failure is not None:
            self.deferred.errback(failure)
            return
        try:
            done = result(child, out, err, self.check)
        except Exception as exc:
            self.deferred.errback(exc)
        else:
            self.deferred.callback(done)
