"""One cell of the coexistence matrix, run in a fresh interpreter:

    python cell.py HOST MODE

The host starts three children of its own (exit codes 11, 12, 13) its own way,
then childproc (in MODE) starts three (21, 22, 23) while the host's are still
alive. Both sides must get exactly their own codes. Prints one JSON object:
``{"outcome": "works" | "refused" | "broken", "detail": ...}``:

* works    - both sides got their true codes;
* refused  - childproc refused up front with one of its errors (named in detail);
* broken   - anything else (a wrong code, a stolen child), described in detail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import childproc
from childproc import ChildprocError, Context, Hooks, SigchldOwner

HOST_CODES = [11, 12, 13]
OUR_CODES = [21, 22, 23]
HOST_SLEEP = 0.4  # host children outlive childproc's start
OUR_SLEEP = 0.1
PY = sys.executable


def prog(code: int, sleep: float) -> list[str]:
    return ["/bin/sh", "-c", f"sleep {sleep}; exit {code}"]


class Refused(Exception):
    pass


def hooks(mode: SigchldOwner) -> Hooks:
    if mode is SigchldOwner.LIBXL_ALWAYS:
        return Hooks(chldowner=mode, reaped_callback=lambda pid, status, user: True)
    return Hooks(chldowner=mode)


def make_context(mode: SigchldOwner) -> Context:
    ctx = Context(SigchldOwner.LIBXL)
    try:
        ctx.setmode(hooks(mode))
    except ChildprocError as e:
        ctx.close()
        raise Refused(f"{type(e).__name__} at setmode: {e}") from e
    return ctx


def run_ours_sync(ctx: Context) -> list[int | None]:
    """childproc's side in a program without an event loop."""
    try:
        kids = [ctx.spawn(prog(c, OUR_SLEEP)) for c in OUR_CODES]
    except ChildprocError as e:
        raise Refused(f"{type(e).__name__} at spawn: {e}") from e
    deadline = time.monotonic() + 20
    while any(k.returncode is None for k in kids) and time.monotonic() < deadline:
        if ctx.mode is SigchldOwner.MAINLOOP:
            ctx.sigchld_occurred()  # the host's duty in MAINLOOP (here: polled)
            time.sleep(0.01)
        else:
            ctx.wait(0.5)
    return [k.returncode for k in kids]


# -- hosts -------------------------------------------------------------------------
def host_bare(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    pids = []
    for code in HOST_CODES:
        pid = os.fork()
        if pid == 0:
            time.sleep(HOST_SLEEP)
            os._exit(code)
        pids.append(pid)
    try:
        with make_context(mode) as ctx:
            ours = run_ours_sync(ctx)
    finally:
        theirs: list[int | None] = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    return theirs, ours


def host_subprocess(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    procs = [subprocess.Popen(prog(c, HOST_SLEEP)) for c in HOST_CODES]
    try:
        with make_context(mode) as ctx:
            ours = run_ours_sync(ctx)
    finally:
        theirs: list[int | None] = [p.wait(20) for p in procs]
    return theirs, ours


def _asyncio_host(
    mode: SigchldOwner, runner: Callable[[Any], Any]
) -> tuple[list[int | None], list[int | None]]:
    import asyncio

    from childproc import asyncio_host

    async def main() -> tuple[list[int | None], list[int | None]]:
        procs = [await asyncio.create_subprocess_exec(*prog(c, HOST_SLEEP)) for c in HOST_CODES]
        try:
            try:
                actx = asyncio_host.AsyncContext(hooks=hooks(mode))
            except ChildprocError as e:
                raise Refused(f"{type(e).__name__} at setup: {e}") from e
            try:
                try:
                    kids = [actx.spawn(prog(c, OUR_SLEEP)) for c in OUR_CODES]
                except ChildprocError as e:
                    raise Refused(f"{type(e).__name__} at spawn: {e}") from e
                if mode is SigchldOwner.MAINLOOP:
                    while any(k.returncode is None for k in kids):
                        actx.context.sigchld_occurred()
                        await asyncio.sleep(0.01)
                ours = [(await asyncio.wait_for(k.wait(), 20)).returncode for k in kids]
            finally:
                actx.close()
        finally:
            theirs: list[int | None] = [await asyncio.wait_for(p.wait(), 20) for p in procs]
        return theirs, ours

    return runner(main())  # type: ignore[no-any-return]


def host_asyncio(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    import asyncio

    return _asyncio_host(mode, asyncio.run)


def _asyncio_watcher(name: str) -> Callable[[SigchldOwner], tuple[list[int | None], list[int | None]]]:
    def host(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
        import asyncio
        import warnings

        warnings.simplefilter("ignore", DeprecationWarning)
        aio: Any = asyncio
        aio.set_child_watcher(getattr(asyncio, name)())

        def runner(coro: Any) -> Any:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            aio.get_child_watcher().attach_loop(loop)
            try:
                return loop.run_until_complete(coro)
            finally:
                loop.close()

        return _asyncio_host(mode, runner)

    return host


def host_uvloop(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    import uvloop

    return _asyncio_host(mode, uvloop.run)


def host_trio(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    import trio

    from childproc import trio_host

    async def main() -> tuple[list[int | None], list[int | None]]:
        theirs: list[int | None] = [None] * 3
        ours: list[int | None] = [None] * 3

        async def host_child(i: int) -> None:
            r = await trio.run_process(prog(HOST_CODES[i], HOST_SLEEP), check=False)
            theirs[i] = r.returncode

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(host_child, i)
            await trio.sleep(0.05)  # the host's children exist first
            try:
                async with trio_host.open_context(hooks=hooks(mode)) as tctx:
                    kids = [tctx.spawn(prog(c, OUR_SLEEP)) for c in OUR_CODES]
                    if mode is SigchldOwner.MAINLOOP:
                        while any(k.returncode is None for k in kids):
                            tctx.context.sigchld_occurred()
                            await trio.sleep(0.01)
                    for i, k in enumerate(kids):
                        ours[i] = (await k.wait()).returncode
            except BaseException as e:  # trio wraps what a nursery body raises in groups
                inner = _unwrap(e)
                if isinstance(inner, ChildprocError):
                    raise Refused(f"{type(inner).__name__}: {inner}") from e
                raise
        return theirs, ours

    return trio.run(main)


def host_twisted(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    from twisted.internet import defer, protocol
    from twisted.internet import reactor as _reactor

    from childproc import twisted_host

    reactor: Any = _reactor  # zope interfaces defeat static typing here
    result: dict[str, Any] = {}

    class Proto(protocol.ProcessProtocol):
        def __init__(self, d: defer.Deferred[int]) -> None:
            self.d = d

        def processEnded(self, reason: Any) -> None:
            self.d.callback(reason.value.exitCode)

    @defer.inlineCallbacks
    def main() -> Any:
        try:
            ds: list[defer.Deferred[int]] = []
            for c in HOST_CODES:
                d: defer.Deferred[int] = defer.Deferred()
                argv = prog(c, HOST_SLEEP)
                reactor.spawnProcess(Proto(d), argv[0], argv, env=None)
                ds.append(d)
            try:
                tctx = twisted_host.TwistedContext(reactor, mode)
            except ChildprocError as e:
                result["refused"] = f"{type(e).__name__} at setup: {e}"
                tctx = None
            ours: list[int | None] = [None] * 3
            if tctx is not None:
                try:
                    kids = [tctx.spawn(prog(c, OUR_SLEEP)) for c in OUR_CODES]
                except ChildprocError as e:
                    result["refused"] = f"{type(e).__name__} at spawn: {e}"
                    kids = []
                if mode is SigchldOwner.MAINLOOP and kids:
                    from twisted.internet.task import LoopingCall

                    lc = LoopingCall(tctx.context.sigchld_occurred)
                    lc.start(0.01)
                for i, k in enumerate(kids):
                    ev = yield k.deferred
                    ours[i] = ev.returncode
                if mode is SigchldOwner.MAINLOOP and kids:
                    lc.stop()
                tctx.close()
            theirs = []
            for d in ds:
                code = yield d
                theirs.append(code)
            result["codes"] = (theirs, ours)
        except BaseException as e:  # report, then stop the reactor
            result["error"] = e
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    if "error" in result:
        raise result["error"]
    if "refused" in result:
        raise Refused(result["refused"])
    return result["codes"]  # type: ignore[no-any-return]


def _mp_exit(code: int) -> None:
    time.sleep(HOST_SLEEP)
    sys.exit(code)


def _mp_host(method: str) -> Callable[[SigchldOwner], tuple[list[int | None], list[int | None]]]:
    def host(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
        import multiprocessing

        mp: Any = multiprocessing.get_context(method)
        procs = [mp.Process(target=_mp_exit, args=(c,)) for c in HOST_CODES]
        for p in procs:
            p.start()
        try:
            with make_context(mode) as ctx:
                ours = run_ours_sync(ctx)
        finally:
            for p in procs:
                p.join(20)
        return [p.exitcode for p in procs], ours

    return host


def host_none(mode: SigchldOwner) -> tuple[list[int | None], list[int | None]]:
    """A program with no children of its own: every mode's home ground."""
    theirs: list[int | None] = list(HOST_CODES)
    with make_context(mode) as ctx:
        return theirs, run_ours_sync(ctx)


HOSTS: dict[str, Callable[[SigchldOwner], tuple[list[int | None], list[int | None]]]] = {
    "no children of its own": host_none,
    "bare (os.fork)": host_bare,
    "subprocess": host_subprocess,
    "asyncio": host_asyncio,
    "uvloop": host_uvloop,
    "trio": host_trio,
    "twisted": host_twisted,
    "multiprocessing fork": _mp_host("fork"),
    "multiprocessing forkserver": _mp_host("forkserver"),
}
if sys.version_info < (3, 14):  # child watchers: deprecated in 3.12, gone in 3.14
    HOSTS["asyncio ThreadedChildWatcher"] = _asyncio_watcher("ThreadedChildWatcher")
    HOSTS["asyncio PidfdChildWatcher"] = _asyncio_watcher("PidfdChildWatcher")
if sys.version_info < (3, 14):
    HOSTS["asyncio SafeChildWatcher"] = _asyncio_watcher("SafeChildWatcher")
    HOSTS["asyncio FastChildWatcher"] = _asyncio_watcher("FastChildWatcher")


def _unwrap(e: BaseException) -> BaseException:
    """The one interesting exception inside (nested) exception groups, as trio raises them."""
    while hasattr(e, "exceptions") and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def run_cell(host: str, mode: str) -> dict[str, Any]:
    m = SigchldOwner[mode]
    try:
        try:
            theirs, ours = HOSTS[host](m)
        except Exception as group:
            raise _unwrap(group) from None
    except Refused as e:
        return {"outcome": "refused", "detail": str(e).split(". ")[0]}
    except ChildprocError as e:
        return {"outcome": "broken", "detail": f"{type(e).__name__}: {e}".split(". ")[0]}
    except Exception as e:
        return {"outcome": "broken", "detail": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    if theirs == HOST_CODES and ours == OUR_CODES:
        return {"outcome": "works", "detail": ""}
    if not isinstance(theirs, list):  # pragma: no cover
        theirs = [theirs]
    return {"outcome": "broken", "detail": f"host got {theirs} (want {HOST_CODES}), childproc got {ours}"}


if __name__ == "__main__":
    signal.alarm(60)
    result = run_cell(sys.argv[1], sys.argv[2])
    # Stable text for the committed results: no pids, one sentence.
    result["detail"] = re.sub(r" \(pids [^)]*\)", "", result["detail"]).split(": they would")[0]
    result["host"], result["mode"] = sys.argv[1], sys.argv[2]
    result["python"] = f"{sys.version_info[0]}.{sys.version_info[1]}"
    result["childproc"] = childproc.__version__
    print(json.dumps(result))
