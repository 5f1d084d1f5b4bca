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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._bridge import Bridge, WaiterBase, default_mode
from ._child import Child
from ._context import Context, Hooks
from ._errors import StateError
from ._policy import SigchldOwner, wants_handler
from ._status import ChildEvent
from ._watchers import pidfd as _pidfd

if TYPE_CHECKING:
    from ._spawn import Argv

__all__ = ["AsyncChild", "AsyncContext", "default_mode", "open_context"]


def _refuse_stealing_watcher() -> None:
    """asyncio's FastChildWatcher (Python < 3.14) reaps with waitpid(-1): refuse it."""
    if sys.version_info >= (3, 14):
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


class AsyncChild(WaiterBase):
    """A child whose exit can be awaited: ``await child`` or ``await child.wait()``."""

    __slots__ = ("_exit",)

    def __init__(self, child: Child, exit_future: asyncio.Future[ChildEvent]) -> None:
        super().__init__(child)
        self._exit = exit_future

    async def wait(self, *, kill_on_cancel: bool = False) -> ChildEvent:
        """The child's final :class:`~childproc.ChildEvent`, once it has exited.

        Cancellation-safe: the exit is never lost (the next ``wait()`` gets it).
        With ``kill_on_cancel``, a cancelled wait also SIGKILLs the child.
        """
        try:
            return await asyncio.shield(self._exit)
        except asyncio.CancelledError:
            if kill_on_cancel and not self._exit.done():
                self._kill_on_cancel()
            raise

    def __await__(self) -> Any:
        return self.wait().__await__()


class AsyncContext(Bridge[AsyncChild]):
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
        super().__init__(Context())
        try:
            self.context.setmode(hooks)
            self._fd = self.context.fileno()
            self.loop.add_reader(self._fd, self._readable)
        except BaseException:
            self.context.close()
            raise
        self._closed = False

    def _check_events(self, events: int) -> None:
        if _is_uvloop(self.loop) and events & (os.WSTOPPED | os.WCONTINUED):
            raise StateError(
                "stop/continue events need childproc's SIGCHLD handler, and under uvloop libuv owns "
                "SIGCHLD: ask for os.WEXITED only"
            )

    def _new_waiter(self, child: Child) -> AsyncChild:
        return AsyncChild(child, self.loop.create_future())

    def _finish(self, waiter: AsyncChild, event: ChildEvent) -> None:
        if not waiter._exit.done():
            waiter._exit.set_result(event)

    def _fail(self, waiter: AsyncChild, error: BaseException) -> None:
        if not waiter._exit.done():
            waiter._exit.set_exception(error)
            waiter._exit.exception()  # awaiters still get it; nobody else is told it went unread

    def _readable(self) -> None:
        try:
            self._dispatch()
        except Exception as exc:  # a callback raised: the loop's handler reports it
            self.loop.call_exception_handler(
                {"message": "exception in a childproc callback", "exception": exc, "context": self.context}
            )

    async def run(self, argv: Argv, *, kill_on_cancel: bool = True, **kwargs: Any) -> ChildEvent:
        """Spawn ``argv`` and wait for it: its final :class:`~childproc.ChildEvent`.

        Cancelling this kills the child (``kill_on_cancel``) and never leaves it
        unreaped: the child is owned (``kill_on_close``) until its exit is collected.
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
            self.loop.remove_reader(self._fd)
        finally:
            self.context.close()
            self._fail_all()

    async def __aenter__(self) -> AsyncContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@asynccontextmanager
async def open_context(
    mode: SigchldOwner | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[AsyncContext]:
    """``async with open_context() as ctx``: an :class:`AsyncContext` on the running loop."""
    ctx = AsyncContext(mode, hooks=hooks)
    try:
        yield ctx
    finally:
        ctx.close()
