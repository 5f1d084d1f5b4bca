"""The asyncio, trio and Twisted adapters: awaiting exits, cancellation, close, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import warnings
from typing import Any

import pytest
import trio
import uvloop

from childproc import (
    ChildEvent,
    ChildStolenError,
    ClosedError,
    EventCode,
    Hooks,
    SigchldOwner,
    StateError,
    asyncio_host,
    trio_host,
)

from .procutil import children, wait_until

SLEEP = ["/bin/sleep", "30"]


@pytest.fixture(scope="module", autouse=True)
def _libuv_signal_pipe() -> None:
    """libuv opens a process-wide signal pipe on first use and keeps it: open it
    before the per-test leak check takes its baseline."""

    async def once() -> None:
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()

    uvloop.run(once())


def sh(code: int) -> list[str]:
    return ["/bin/sh", "-c", f"exit {code}"]


# -- asyncio ---------------------------------------------------------------------------
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_awaits_exits_beside_asyncio_subprocesses(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            assert ctx.mode is SigchldOwner.PIDFD
            mine = ctx.spawn(sh(3))
            theirs = await asyncio.create_subprocess_exec(*sh(4))
            event = await mine.wait()
            assert isinstance(event, ChildEvent) and event.returncode == 3
            assert await theirs.wait() == 4
            assert (await ctx.run(sh(5))).returncode == 5
            assert signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None) or loop == "asyncio"

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_asyncio_cancelled_wait_never_loses_the_exit() -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(SLEEP)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(child.wait(), 0.05)  # cancelled, child untouched
            assert child.returncode is None
            child.terminate()
            event = await child.wait()  # the exit is still there to collect
            assert event.code is EventCode.KILLED and event.status == signal.SIGTERM

            doomed = ctx.spawn(SLEEP)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(doomed.wait(kill_on_cancel=True), 0.05)
            assert (await doomed.wait()).status == signal.SIGKILL

            task = asyncio.ensure_future(ctx.run(SLEEP))  # run() kills on cancel by default
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_asyncio_close_fails_pending_waits() -> None:
    async def main() -> None:
        ctx = asyncio_host.AsyncContext(hooks=Hooks(chldowner=SigchldOwner.PIDFD))
        child = ctx.spawn(SLEEP, kill_on_close=True)
        ctx.close()
        with pytest.raises(ClosedError):
            await child.wait()

    asyncio.run(main())


def test_asyncio_callback_errors_go_to_the_loop_exception_handler() -> None:
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: seen.append(context))

        def bad(child: object, event: ChildEvent) -> None:
            raise ValueError("callback failed")

        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(sh(1), on_event=bad)
            assert (await child.wait()).returncode == 1  # the exit still arrives

    asyncio.run(main())
    assert seen and isinstance(seen[0]["exception"], ValueError)


def test_asyncio_under_uvloop_refuses_modes_that_need_a_handler() -> None:
    async def main() -> None:
        with pytest.raises(StateError, match="libuv owns SIGCHLD"):
            asyncio_host.AsyncContext(SigchldOwner.LIBXL_ALWAYS)
        async with asyncio_host.open_context(SigchldOwner.MAINLOOP) as ctx:
            child = ctx.spawn(sh(7))
            while child.returncode is None:
                ctx.context.sigchld_occurred()
                await asyncio.sleep(0.01)
            assert (await child.wait()).returncode == 7

    uvloop.run(main())


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="child watchers were removed in 3.14")
def test_asyncio_fast_child_watcher_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        aio: Any = asyncio
        watcher = aio.FastChildWatcher()
        aio.set_child_watcher(watcher)

        async def main() -> None:
            with pytest.raises(StateError, match="FastChildWatcher"):
                asyncio_host.AsyncContext()

        try:
            loop = asyncio.new_event_loop()
            watcher.attach_loop(loop)
            loop.run_until_complete(main())
        finally:
            watcher.close()
            loop.close()
            aio.set_child_watcher(None)


# -- trio ---------------------------------------------------------------------------------
def test_trio_awaits_exits_beside_run_process_and_cancellation() -> None:
    async def main() -> None:
        async with trio_host.open_context() as ctx:
            mine = ctx.spawn(sh(3))
            theirs = await trio.run_process(sh(4), check=False)
            assert (await mine.wait()).returncode == 3 and theirs.returncode == 4
            child = ctx.spawn(SLEEP)
            with trio.move_on_after(0.05):
                await child.wait()
            child.kill()
            assert (await child.wait()).status == signal.SIGKILL
            doomed = ctx.spawn(SLEEP)
            with trio.move_on_after(0.05):
                await doomed.wait(kill_on_cancel=True)
            assert (await doomed.wait()).status == signal.SIGKILL
            assert (await ctx.run(sh(6))).returncode == 6

    trio.run(main)


def test_trio_close_fails_pending_waits() -> None:
    async def main() -> None:
        async with trio_host.open_context() as ctx:
            child = ctx.spawn(SLEEP, kill_on_close=True)
        with pytest.raises(ClosedError):
            await child.wait()

    trio.run(main)


def test_a_close_warning_names_the_applications_line_through_an_adapter() -> None:
    """A ResourceWarning from a context closed with children running points at the
    ``async with`` that closed it, not into childproc or contextlib."""
    exits: list[int] = []

    async def with_asyncio() -> None:
        async with asyncio_host.open_context() as ctx:
            exits.append(ctx.spawn(["sleep", "0.2"]).pid)

    async def with_trio() -> None:
        async with trio_host.open_context() as ctx:
            exits.append(ctx.spawn(["sleep", "0.2"]).pid)

    def asyncio_run() -> None:
        asyncio.run(with_asyncio())

    def trio_run() -> None:
        trio.run(with_trio)

    for run in (asyncio_run, trio_run):
        with pytest.warns(ResourceWarning, match="still ran") as record:
            run()
        found = [(w.filename, w.lineno) for w in record if issubclass(w.category, ResourceWarning)]
        assert all(name == __file__ for name, _ in found), found
    assert wait_until(lambda: not set(exits) & set(children()), timeout=10)  # the orphanage reaped them


# -- Twisted: in a subprocess, because a reactor runs once per process -------------------
def test_twisted_adapter_beside_spawn_process() -> None:
    code = r"""
import sys
from twisted.internet import reactor, protocol, defer
from childproc import twisted_host
out = {}
class P(protocol.ProcessProtocol):
    def __init__(self, d): self.d = d
    def processEnded(self, reason): self.d.callback(reason.value.exitCode)
@defer.inlineCallbacks
def main():
    try:
        ctx = twisted_host.TwistedContext(reactor)
        d = defer.Deferred()
        reactor.spawnProcess(P(d), "/bin/sh", ["/bin/sh", "-c", "exit 11"], env=None)
        mine = ctx.spawn(["/bin/sh", "-c", "exit 21"])
        ev = yield mine.deferred
        out["ours"] = ev.returncode
        out["theirs"] = yield d
        pending = ctx.spawn(["/bin/sleep", "30"], kill_on_close=True)
        ctx.close()
        try:
            yield pending.deferred
        except Exception as e:
            out["closed"] = type(e).__name__
    finally:
        reactor.stop()
reactor.callWhenRunning(main)
reactor.run()
print(out)
sys.exit(0 if out == {"ours": 21, "theirs": 11, "closed": "ClosedError"} else 1)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_adapter_is_imported_by_the_core() -> None:
    code = (
        "import sys, childproc; c = childproc.Context(); c.run(['true']); c.close(); "
        "print(sorted(m for m in ('trio', 'twisted', 'uvloop', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
    assert os.path.basename(asyncio_host.__file__) == "asyncio_host.py"


# -- regressions found in review ----------------------------------------------------------
def test_a_stolen_child_fails_its_waiter_instead_of_hanging() -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(sh(0))
            os.waitpid(child.pid, 0)  # someone breaks the contract
            with pytest.raises(ChildStolenError):
                await asyncio.wait_for(child.wait(), 10)

    asyncio.run(main())

    async def trio_main() -> None:
        async with trio_host.open_context() as ctx:
            child = ctx.spawn(sh(0))
            os.waitpid(child.pid, 0)
            with trio.fail_after(10), pytest.raises(ChildStolenError):
                await child.wait()

    trio.run(trio_main)


def test_uvloop_refuses_stop_events() -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            with pytest.raises(StateError, match="stop/continue"):
                ctx.spawn(SLEEP, events=os.WEXITED | os.WSTOPPED)

    uvloop.run(main())


def test_asyncio_close_after_the_context_was_closed() -> None:
    async def main() -> None:
        ctx = asyncio_host.AsyncContext()
        ctx.context.close()
        ctx.close()  # must not raise, and must detach from the loop

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_an_exit_delivered_on_another_thread_completes_the_waiter_on_the_loop() -> None:
    """A sync wait on ``waiter.child`` in a worker thread delivers the exit there. The
    waiter's future completes on the loop's thread (set from the worker, asyncio's
    debug mode raised there and the awaiting task hung), and the worker's wait ends
    at the exit even when the loop's dispatch took the wake-up first (it slept on,
    a second)."""

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            for _ in range(4):
                child = ctx.spawn(["sleep", "0.3"])
                awaiting = asyncio.ensure_future(child.wait())
                await asyncio.sleep(0.05)
                t0 = loop.time()
                event = await asyncio.to_thread(child.child.wait)
                assert event is not None and event.returncode == 0
                assert (await asyncio.wait_for(awaiting, 5)).returncode == 0
                assert loop.time() - t0 < 0.8, loop.time() - t0

    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
