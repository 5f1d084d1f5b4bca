"""Trees through the adapters: a timeout or a cancellation of ``run(kill_tree=...)``
kills the whole tree, and each adapter's ``stop()`` (asyncio, trio, anyio on both
backends, Twisted in a subprocess). Real processes and cgroups; the leak check
fails a test that leaves a tree's cgroup behind."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

import childproc
from childproc import _cgroup, anyio_host, asyncio_host, trio_host

from .kids import run_on_a_reactor
from .procutil import alive, wait_until
from .test_hostile import default_sigint
from .test_trees import _pids_of

CGROUPS = _cgroup.home() is not None
KINDS = [pytest.param("cgroup", marks=pytest.mark.skipif(not CGROUPS, reason="no cgroups")), "process-group"]
STRUCTURED = ["trio", "anyio-asyncio", "anyio-trio"]


def _script(report: Path) -> list[str]:
    return ["sh", "-c", f'sleep 60 & echo $! >> "{report}"; sleep 60 & echo $! >> "{report}"; wait']


def _all_gone(report: Path) -> bool:
    pids = _pids_of(report, 2)
    return wait_until(lambda: not any(alive(p) for p in pids), timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_asyncio_timeout_cancellation_and_stop_reach_the_tree(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            first = tmp_path / "first"
            with pytest.raises(childproc.TimeoutExpired):
                await ctx.run(_script(first), kill_tree=kind, timeout=0.5)
            assert _all_gone(first)

            second = tmp_path / "second"
            task = asyncio.ensure_future(ctx.run(_script(second), kill_tree=kind))
            while not second.exists() or len(second.read_text().split()) < 2:
                await asyncio.sleep(0.01)  # (the task must run to spawn)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _all_gone(second)

            third = tmp_path / "third"
            child = ctx.spawn(_script(third), kill_tree=kind)
            _pids_of(third, 2)
            event = await child.stop(grace=2)
            assert event is not None and event.returncode == -signal.SIGTERM
            assert _all_gone(third)

            stubborn = tmp_path / "stubborn"  # (the child obeys SIGTERM, its descendant not)
            script = f'sh -c "trap \'\' TERM; sleep 60" & echo $! >> "{stubborn}"; sleep 60'
            for _ in range(4):  # (a poll may see the tree empty by luck: a few rounds)
                stubborn.unlink(missing_ok=True)
                child = ctx.spawn(["sh", "-c", script], kill_tree=kind)
                _pids_of(stubborn, 1)
                await asyncio.sleep(0.1)  # (its trap is set)
                await child.stop(grace=0.2)
                if kind == "cgroup":  # (empty when stop() returns: it returned at the child's exit)
                    assert child.child._tree is not None and child.child._tree.wait_empty(0)

            fourth = tmp_path / "fourth"
            child = ctx.spawn(_script(fourth), kill_tree=kind)
            _pids_of(fourth, 2)
            wait = asyncio.ensure_future(child.wait(kill_on_cancel=True))
            await asyncio.sleep(0.05)
            wait.cancel()
            with pytest.raises(asyncio.CancelledError):
                await wait
            assert _all_gone(fourth)
            await child.wait()

            fifth = tmp_path / "fifth"
            child = ctx.spawn(_script(fifth), kill_tree=kind)
            _pids_of(fifth, 2)
            child.kill_tree()
            event = await child.wait()
            assert event.returncode == -signal.SIGKILL
            assert _all_gone(fifth)

    asyncio.run(main())


def _structured(flavour: str, main: Any) -> None:
    if flavour == "asyncio":  # (the asyncio adapter, under anyio's task groups)
        asyncio.run(main(asyncio_host))
    elif flavour == "trio":
        trio.run(main, trio_host)
    else:
        anyio.run(main, anyio_host, backend=flavour.split("-")[1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", STRUCTURED)
@pytest.mark.parametrize("kind", KINDS)
def test_structured_timeout_and_stop_reach_the_tree(tmp_path: Path, flavour: str, kind: str) -> None:
    async def main(host: Any) -> None:
        async with host.open_context() as ctx:
            first = tmp_path / "first"
            with pytest.raises(childproc.TimeoutExpired):
                await ctx.run(_script(first), kill_tree=kind, timeout=0.5)
            assert _all_gone(first)

            second = tmp_path / "second"
            child = ctx.spawn(["sh", "-c", f"trap '' TERM; {' '.join(_script(second)[2:])}"], kill_tree=kind)
            _pids_of(second, 2)
            t0 = time.monotonic()
            event = await child.stop(grace=0.3)  # it ignores SIGTERM: SIGKILLed after the grace
            assert event is not None and event.returncode == -signal.SIGKILL
            assert 0.3 <= time.monotonic() - t0 < 5
            assert _all_gone(second)

            third = tmp_path / "third"
            child = ctx.spawn(_script(third), kill_tree=kind)
            _pids_of(third, 2)
            child.kill_tree(signal.SIGTERM)
            event = await child.wait()
            assert event.returncode == -signal.SIGTERM
            assert _all_gone(third)
            plain = ctx.spawn(["true"])
            with pytest.raises(childproc.StateError):
                plain.kill_tree()  # (spawned without kill_tree=)
            await plain.wait()

    _structured(flavour, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_twisted_stop_reaches_the_tree(tmp_path: Path, kind: str) -> None:
    report = str(tmp_path / "pid")
    body = f"""
        child = ctx.spawn(["sh", "-c", "sleep 60 & echo $! > {report!r}; wait"], kill_tree={kind!r})
        while not os.path.exists({report!r}) or not open({report!r}).read().strip():
            yield task_sleep(0.01)
        grandchild = int(open({report!r}).read())
        event = yield child.stop(grace=2)
        out["stop"] = event.returncode
        for _ in range(500):
            try:
                if open("/proc/%d/stat" % grandchild).read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except OSError:
                break
            yield task_sleep(0.01)
        else:
            out["grandchild"] = "alive"
    """
    run_on_a_reactor(body, 'sys.exit(0 if out == {"stop": -signal.SIGTERM} else str(out))')


# -- a killed tree that is slow to leave does not block the loop ----------------------
#: How long the injected slowness keeps a killed tree from settling.
SLOW_S = 0.5

# Once SIGKILLed, a cgroup tree's processes take SLOW_S to leave (as in an
# uninterruptible sleep): its cgroup stays populated, and a wait for it to empty blocks
# as the real one would. A process-group tree's members keep coming back and dying for
# SLOW_S after the SIGKILL. The same text runs in Twisted's subprocess.
_SLOW_TREE = f"""
import time as _time
from childproc import _cgroup as _cg, _trees as _tr
from childproc._subreaper import SUBREAPER as _SUBREAPER
_until = []
_tracked = []
def _start():
    if not _until:
        _until.append(_time.monotonic() + {SLOW_S})
def _slow():
    return bool(_until) and _time.monotonic() < _until[0]
def _slow_signal(self, sig, _real=_cg.CgroupTree.signal):
    if sig == 9:
        _start()
    _real(self, sig)
def _slow_wait_empty(self, timeout, _real=_cg.CgroupTree.wait_empty):
    if _slow():
        if timeout <= 0:
            return False
        _time.sleep(min(timeout, _until[0] - _time.monotonic()))
    return _real(self, timeout)
def _slow_remove_tree(path, _real=_cg._remove_tree):
    return not _slow() and _real(path)
def _slow_group_signal(self, sig, _real=_tr.GroupTree.signal):
    if sig == 9:
        _start()
    _real(self, sig)
def _slow_track(pgid, _real=_SUBREAPER.track):
    _tracked.append(pgid)
    _real(pgid)
def _slow_groups(_real=_SUBREAPER.groups):
    return sorted(set(_real()) | set(_tracked)) if _slow() else _real()
def _slow_reap_members(pgid, _real=_tr._reap_members):
    return _real(pgid) or _slow()
PATCHES = [
    (_cg.CgroupTree, "signal", _slow_signal),
    (_cg.CgroupTree, "wait_empty", _slow_wait_empty),
    (_cg, "_remove_tree", _slow_remove_tree),
    (_tr.GroupTree, "signal", _slow_group_signal),
    (_SUBREAPER, "track", _slow_track),
    (_SUBREAPER, "groups", _slow_groups),
    (_tr, "_reap_members", _slow_reap_members),
]
"""


def _slow_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a killed tree take SLOW_S to settle."""
    scope: dict[str, Any] = {}
    exec(_SLOW_TREE, scope)
    for owner, name, value in scope["PATCHES"]:
        monkeypatch.setattr(owner, name, value)


def _check_ticks(ticks: int, took: float) -> None:
    """The loop ran its 10 ms ticker all along the settle (it was blocked before)."""
    assert took >= SLOW_S * 0.8, f"the settle took {took:.3f} s: the slowness was not injected"
    assert ticks >= took / 0.01 * 0.5, f"only {ticks} ticks of 10 ms in {took:.3f} s: the loop was blocked"


#: Where a killed tree is waited for: a cgroup tree, in the adapters' default mode; a
#: process-group tree, where its members come back to be reaped (LIBXL_ALWAYS).
SLOW_CASES = [
    pytest.param("cgroup", None, marks=pytest.mark.skipif(not CGROUPS, reason="no cgroups"), id="cgroup"),
    pytest.param("process-group", childproc.SigchldOwner.LIBXL_ALWAYS, id="process-group"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", ["asyncio", *STRUCTURED])
@pytest.mark.parametrize(("kind", "mode"), SLOW_CASES)
def test_run_settles_a_slow_tree_without_blocking_the_loop(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flavour: str,
    kind: str,
    mode: childproc.SigchldOwner | None,
) -> None:
    _slow_tree(monkeypatch)

    async def main(host: Any) -> None:
        ticks = 0
        took = 0.0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        async with host.open_context(mode) as ctx, anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            report = tmp_path / "pids"
            t0 = time.monotonic()
            with pytest.raises(childproc.TimeoutExpired):
                await ctx.run(_script(report), kill_tree=kind, timeout=0.1)
            took = time.monotonic() - t0 - 0.1
            tg.cancel_scope.cancel()
        _check_ticks(ticks, took)
        assert _all_gone(report)

    _structured(flavour, main)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not CGROUPS, reason="no cgroups")
def test_twisted_run_settles_a_slow_tree_without_blocking_the_reactor(tmp_path: Path) -> None:
    """(A cgroup tree: a process-group tree's members come back only in LIBXL_ALWAYS,
    which Twisted's own SIGCHLD handler rules out.)"""
    report = tmp_path / "pids"
    body = (
        _SLOW_TREE
        + f"""
for _owner, _name, _value in PATCHES:
    setattr(_owner, _name, _value)
ticks = [0]
def tick():
    ticks[0] += 1
from twisted.internet import task
loop = task.LoopingCall(tick)
loop.start(0.01, now=False)
t0 = time.monotonic()
try:
    yield ctx.run({_script(report)!r}, kill_tree="cgroup", timeout=0.1)
except childproc.TimeoutExpired:
    out["timeout"] = True
took = time.monotonic() - t0 - 0.1
loop.stop()
out["slow"] = took >= {SLOW_S} * 0.8 or took
out["ticking"] = ticks[0] >= took / 0.01 * 0.5 or ticks[0]
"""
    )
    run_on_a_reactor(
        body, 'sys.exit(0 if out == {"timeout": True, "slow": True, "ticking": True} else str(out))'
    )
    assert _all_gone(report)


def _settled_now(took: float) -> None:
    """The run waited for its slow tree, and its cgroup is gone (not left pending)."""
    home = _cgroup.home()
    assert home is not None
    assert took >= SLOW_S * 0.8, f"run() raised {took:.3f} s in: it did not wait for the killed tree"
    assert not home.pending and not home.trees_on_disk(), (list(home.pending), home.trees_on_disk())


@pytest.mark.timeout(60)
@pytest.mark.skipif(not CGROUPS, reason="no cgroups")
@pytest.mark.parametrize("cancels", [1, 2])
def test_asyncio_cancelled_run_settles_its_tree(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cancels: int
) -> None:
    """A cancelled run() (once, or again while it waits for the killed child's exit:
    an enclosing timeout and a task group) still waits for its tree before it raises."""
    _slow_tree(monkeypatch)

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            report = tmp_path / "pids"
            task = asyncio.ensure_future(ctx.run(_script(report), kill_tree="cgroup"))
            while not report.exists() or len(report.read_text().split()) < 2:
                await asyncio.sleep(0.01)  # (the task must run to spawn)
            t0 = time.monotonic()
            task.cancel()
            for _ in range(cancels - 1):
                await asyncio.sleep(0)  # (run() now waits for the exit)
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            _settled_now(time.monotonic() - t0)
            assert _all_gone(report)

    asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.skipif(not CGROUPS, reason="no cgroups")
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_cancelled_run_settles_its_tree(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flavour: str
) -> None:
    _slow_tree(monkeypatch)

    async def main(host: Any) -> None:
        async with host.open_context() as ctx:
            report = tmp_path / "pids"
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: ctx.run(_script(report), kill_tree="cgroup"))
                    while not report.exists() or len(report.read_text().split()) < 2:
                        await anyio.sleep(0.01)
                    t0 = time.monotonic()
                    scope.cancel()
            _settled_now(time.monotonic() - t0)
            assert _all_gone(report)

    _structured(flavour, main)


# -- a stop() cut short still ends the tree ------------------------------------------
_TERM_IGNORED = "trap '' TERM; "
_READY = "sleep 30 & echo ready; wait"  # (read "ready" first: a TERM before the trap would end it)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_stop_kills_the_tree(tmp_path: Path, kind: str) -> None:
    """``await child.stop()`` cancelled during its grace (a deadline around a
    shutdown) SIGKILLs the tree before the cancellation goes on: it left the child
    and its tree running, ignoring SIGTERM, for good."""

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            report = tmp_path / "pids"
            child = ctx.spawn(["sh", "-c", _TERM_IGNORED + " ".join(_script(report)[2:])], kill_tree=kind)
            while not report.exists() or len(report.read_text().split()) < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(child.stop(grace=30), 0.2)
            event = await child.wait()
            assert event.returncode == -signal.SIGKILL
            assert _all_gone(report)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_context_closed_right_after_a_cancelled_stop_reaps_without_a_warning() -> None:
    """A cancelled ``stop()`` killed the child: the context closed next (Ctrl-C under
    ``asyncio.run`` leaves the ``open_context()`` block at once) reaps it, and does
    not warn that a child it had killed still ran (a new user's trial saw it warn)."""
    pids: list[int] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["sh", "-c", _TERM_IGNORED + _READY], kill_tree=True, stdout=childproc.PIPE)
            pids.append(child.pid)
            assert child.stdout is not None and await child.stdout.readline() == b"ready\n"
            asyncio.get_running_loop().call_later(0.2, task.cancel)  # (as Ctrl-C does)
            await child.stop(grace=30)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main())
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # (reaped by the close)


@pytest.mark.timeout(60)
def test_a_context_closed_right_after_an_interrupted_sync_stop_reaps_without_a_warning() -> None:
    """The sync ``stop()`` interrupted by Ctrl-C inside ``with Context()``: the close
    that follows reaps the child it killed, with no warning that it still ran."""
    main = threading.main_thread().ident
    assert main is not None
    pids: list[int] = []
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    with default_sigint(), warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        try:
            with pytest.raises(KeyboardInterrupt), childproc.Context() as ctx:
                child = ctx.spawn(["sh", "-c", _TERM_IGNORED + _READY], kill_tree=True, stdout=childproc.PIPE)
                pids.append(child.pid)
                assert child.stdout is not None and child.stdout.readline() == b"ready\n"
                timer.start()
                child.stop(grace=30)
        finally:
            timer.cancel()
            timer.join()
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # (reaped by the close)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_stop_kills_the_tree(tmp_path: Path, kind: str) -> None:
    """The sync ``child.stop()`` interrupted by Ctrl-C during its grace: the tree is
    SIGKILLed before the KeyboardInterrupt goes on."""
    main = threading.main_thread().ident
    assert main is not None
    report = tmp_path / "pids"
    with default_sigint(), childproc.Context() as ctx:
        child = ctx.spawn(["sh", "-c", _TERM_IGNORED + " ".join(_script(report)[2:])], kill_tree=kind)
        _pids_of(report, 2)
        timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                child.stop(grace=30)
        finally:
            timer.cancel()
            timer.join()
        event = child.wait(10)
        assert event is not None and event.returncode == -signal.SIGKILL
        assert _all_gone(report)


@pytest.mark.timeout(60)
def test_a_cancelled_twisted_stop_kills_the_child() -> None:
    """Twisted's CancelledError is an Exception: stop() must still take it for a
    cancellation and SIGKILL the child (it ran on, ignoring SIGTERM)."""
    body = """
        c = ctx.spawn(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
                      stdout=childproc.PIPE)
        yield task_sleep(0.3)
        d = c.stop(grace=30)
        yield task_sleep(0.2)
        d.cancel()
        try:
            yield d
        except defer.CancelledError:
            out["cancelled"] = True
        event = yield c.deferred
        out["returncode"] = event.returncode
    """
    run_on_a_reactor(body, 'sys.exit(0 if out == {"cancelled": True, "returncode": -9} else str(out))')


@pytest.mark.timeout(60)
@pytest.mark.skipif(not CGROUPS, reason="no cgroups")
@pytest.mark.parametrize("flavour", ["asyncio", *STRUCTURED])
@pytest.mark.parametrize("how", ["cancelled", "interrupted"])
def test_a_cancelled_wait_kills_what_outlives_an_exited_child(tmp_path: Path, flavour: str, how: str) -> None:
    """A terminal's Ctrl-C kills a shell before its task is cancelled (or, under trio,
    interrupted), while the shell's background job, which ignores SIGINT, lives on in
    its tree: ``wait(kill_on_cancel=True)`` then kills what is left of the tree
    (a new user's trial found it outliving the program, its cgroup too)."""
    report = tmp_path / "pid"

    async def main(host: Any) -> None:
        async with host.open_context() as ctx:
            child = ctx.spawn(["sh", "-c", f'sleep 60 & echo $! > "{report}"; wait'], kill_tree="cgroup")
            (grandchild,) = _pids_of(report, 1)
            os.kill(child.pid, signal.SIGKILL)  # the leader alone dies
            await child.wait()
            assert alive(grandchild)
            if how == "cancelled":
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await child.wait(kill_on_cancel=True)
                assert scope.cancelled_caught
            else:
                with pytest.raises(KeyboardInterrupt):
                    await _interrupted(child.wait(kill_on_cancel=True))
            assert wait_until(lambda: not alive(grandchild), timeout=5), "the tree outlived the wait"

    _structured(flavour, main)


async def _interrupted(waiting: Any) -> None:
    """``waiting``, with a KeyboardInterrupt raised into it at its first suspension
    (where trio delivers Ctrl-C to the task that waits)."""
    waiting.send(None)  # (an exited child's wait passes one checkpoint first)
    waiting.throw(KeyboardInterrupt())


@pytest.mark.timeout(30)
def test_an_adapter_spawn_cut_short_kills_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt between the context's spawn and the waiter the caller gets (a
    review found the gap) kills the child, as an interrupted ``Context.spawn`` does."""
    original = asyncio_host.AsyncContext._new_waiter

    def interrupted(self: Any, child: Any) -> Any:
        monkeypatch.setattr(asyncio_host.AsyncContext, "_new_waiter", original)
        raise KeyboardInterrupt("simulated: before the waiter")

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            monkeypatch.setattr(asyncio_host.AsyncContext, "_new_waiter", interrupted)
            with pytest.raises(KeyboardInterrupt):
                ctx.spawn(["sleep", "60"], kill_tree=True)
            (pid,) = ctx.context.children
            for _ in range(500):
                if not ctx.context.children:
                    break
                await asyncio.sleep(0.01)
            assert not ctx.context.children and not alive(pid)

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flavour", ["asyncio", *STRUCTURED])
def test_a_wait_closed_unfinished_kills_nothing(flavour: str) -> None:
    """A ``wait(kill_on_cancel=True)`` coroutine closed without a cancellation (a task
    dropped with its loop; ``GeneratorExit``) kills nothing: nobody asked it to."""

    async def main(host: Any) -> None:
        async with host.open_context() as ctx:
            child = ctx.spawn(["sleep", "60"])
            waiting = child.wait(kill_on_cancel=True)
            waiting.send(None)  # (suspended in the wait)
            waiting.close()
            await (asyncio.sleep(0.2) if flavour == "asyncio" else anyio.sleep(0.2))
            assert child.returncode is None and alive(child.pid)
            child.kill()
            await child.wait()

    _structured(flavour, main)
