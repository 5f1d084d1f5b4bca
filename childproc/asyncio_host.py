"""childproc inside an asyncio program: awaitable children, nothing taken from the host.

The context's fd is attached with ``loop.add_reader``; the adapter never calls
``loop.add_signal_handler`` or ``signal.set_wakeup_fd``, which belong to the
host. It works on the default loop and on uvloop::

    async with childproc.asyncio_host.open_context() as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "exit 3"])
        event = await child.wait()            # ChildEvent: exited with status 3

Mode: by default PIDFD where the kernel has pidfds (no SIGCHLD handler at all,
steal-free), else SELECTIVE_REAP. Under uvloop a mode that would install a
SIGCHLD handler is refused (libuv owns SIGCHLD there), so without pidfds use
MAINLOOP.

Cancellation: cancelling ``await child.wait()`` never loses the exit. The
child's exit is recorded on its handle, and a later ``wait()`` returns it at
once. With ``kill_on_cancel=True`` the child is also killed (SIGKILL) when the
wait is cancelled.

Threads: callbacks and futures complete on the loop's thread. Do not call the
wrapped context's ``dispatch``/``wait`` yourself.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ._child import Child, EventCallback
from ._context import Context, Hooks
from ._errors import ClosedError, StateError
from ._policy import SigchldOwner, wants_handler
from ._spawn import Argv
from ._status import ChildEvent
from ._watchers import pidfd as _pidfd

__all__ = ["AsyncChild", "AsyncContext", "default_mode", "open_context"]


def default_mode() -> SigchldOwner:
    """PIDFD where pidfds work (no SIGCHLD at all), else SELECTIVE_REAP."""
    return SigchldOwner.PIDFD if _pidfd.supported() else SigchldOwner.SELECTIVE_REAP


def _refuse_stealing_watcher() -> None:
    """asyncio's FastChildWatcher (Python < 3.12) reaps with waitpid(-1): refuse it."""
    if sys.version_info >= (3, 12):
        return  # child watchers are gone: asyncio uses pidfds or a thread per child
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            watcher = asyncio.get_child_watcher()
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            return
    if type(watcher).__name__ == "FastChildWatcher":
        raise StateError(
            "asyncio's FastChildWatcher reaps every child of the process with waitpid(-1): it "
            "would take childproc's children. Use asyncio's default ThreadedChildWatcher (or "
            "PidfdChildWatcher) with childproc"
        )


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.split(".")[0] == "uvloop"


class AsyncChild:
    """A child whose exit can be awaited. Wraps a :class:`~childproc.Child`."""

    __slots__ = ("_exit", "child")

    def __init__(self, child: Child, exit_future: asyncio.Future[ChildEvent]) -> None:
        #: The underlying handle (pid, pidfd, state, send_signal, ...).
        self.child = child
        self._exit = exit_future

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def send_signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def terminate(self) -> None:
        self.child.terminate()

    def kill(self) -> None:
        self.child.kill()

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent`, once it has exited.

        Cancellation-safe: the exit is never lost (the next ``wait()`` gets it).
        With ``kill_on_cancel``, a cancelled wait also SIGKILLs the child.
        """
        try:
            return await asyncio.shield(self._exit)
        except asyncio.CancelledError:
            if kill_on_cancel and not self._exit.done():
                # Owned from now on: if the context closes before the exit is
                # collected, close() reaps it rather than leaving a zombie.
                self.child.kill_on_close = True
                try:
                    self.child.kill()
                except StateError:
                    pass  # it exited meanwhile
            raise

    def __await__(self) -> Any:
        return self.wait().__await__()

    def __repr__(self) -> str:
        return f"<AsyncChild {self.child!r}>"


class AsyncContext:
    """A :class:`~childproc.Context` attached to a running asyncio loop."""

    def __init__(
        self,
        mode: SigchldOwner | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        _refuse_stealing_watcher()
        if hooks is None:
            hooks = Hooks(chldowner=mode if mode is not None else default_mode())
        elif mode is not None:
            raise StateError("give either mode= or hooks=, not both")
        if _is_uvloop(self.loop) and wants_handler(hooks.chldowner, 1, _pidfd.supported(), 0):
            raise StateError(
                f"{hooks.chldowner.name} mode would install a SIGCHLD handler, but under uvloop libuv "
                "owns SIGCHLD. Use PIDFD (needs pidfds) or MAINLOOP, or SELECTIVE_REAP where pidfds work"
            )
        # pid -> (the future its exit completes, the application's own on_event)
        self._futures: dict[int, tuple[asyncio.Future[ChildEvent], EventCallback | None]] = {}
        self.context = Context()
        try:
            self.context.setmode(hooks)
            self.loop.add_reader(self.context.fileno(), self._readable)
        except BaseException:
            self.context.close()
            raise
        self._closed = False

    @property
    def mode(self) -> SigchldOwner:
        return self.context.mode

    def _readable(self) -> None:
        try:
            self.context.dispatch()
        except Exception as exc:  # a callback raised: the loop's handler reports it
            self.loop.call_exception_handler(
                {"message": "exception in a childproc callback", "exception": exc, "context": self.context}
            )

    def _wrap(self, child: Child, user_on_event: EventCallback | None) -> AsyncChild:
        fut: asyncio.Future[ChildEvent] = self.loop.create_future()
        self._futures[child.pid] = (fut, user_on_event)
        return AsyncChild(child, fut)

    def _on_event(self, child: Child, event: ChildEvent) -> None:
        entry = self._futures.get(child.pid)
        if entry is None:
            return
        fut, user = entry
        if event.terminal:
            del self._futures[child.pid]
            if not fut.done():
                fut.set_result(event)
        if user is not None:
            user(child, event)

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
        events: int = os.WEXITED,
        kill_on_close: bool = False,
    ) -> AsyncChild:
        """:meth:`Context.spawn`, returning an awaitable child."""
        child = self.context.spawn(
            argv,
            self._on_event,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            events=events,
            kill_on_close=kill_on_close,
        )
        return self._wrap(child, on_event)

    def fork(
        self, *, on_event: EventCallback | None = None, events: int = os.WEXITED, kill_on_close: bool = False
    ) -> AsyncChild | None:
        """:meth:`Context.fork`: an awaitable child in the parent, None in the child
        (which must not touch the loop: exec or ``os._exit``)."""
        child = self.context.fork(self._on_event, events=events, kill_on_close=kill_on_close)
        if child is None:
            return None
        return self._wrap(child, on_event)

    def adopt(
        self, pid: int | None = None, *, pidfd: int | None = None, on_event: EventCallback | None = None
    ) -> AsyncChild:
        """:meth:`Context.adopt`, returning an awaitable child."""
        child = self.context.adopt(pid, self._on_event, pidfd=pidfd)
        return self._wrap(child, on_event)

    async def run(self, argv: Argv, *, kill_on_cancel: bool = True, **kwargs: Any) -> ChildEvent:
        """Spawn ``argv`` and wait for it: its final :class:`~childproc.ChildEvent`.

        Cancelling this kills the child (``kill_on_cancel``) and never leaves it
        unreaped: its exit is still collected by the context.
        """
        kwargs.setdefault("kill_on_close", True)
        return await self.spawn(argv, **kwargs).wait(kill_on_cancel=kill_on_cancel)

    def close(self) -> None:
        """Detach from the loop and close the context (see :meth:`Context.close`).
        Awaiters of children that had not exited get :class:`~childproc.ClosedError`."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self.context.fileno())
        finally:
            self.context.close()
            for fut, _ in list(self._futures.values()):
                if not fut.done():
                    fut.set_exception(ClosedError("the childproc context was closed before the child exited"))
                    fut.exception()  # awaiters still get it; nobody else is told it went unread
            self._futures.clear()

    async def __aenter__(self) -> AsyncContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@asynccontextmanager
async def open_context(mode: SigchldOwner | None = None, *, hooks: Hooks | None = None) -> Any:
    """``async with open_context() as ctx``: an :class:`AsyncContext` on the running loop."""
    ctx = AsyncContext(mode, hooks=hooks)
    try:
        yield ctx
    finally:
        ctx.close()
