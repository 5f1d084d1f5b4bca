"""Trees through the adapters: a timeout or a cancellation of ``run(kill_tree=...)``
kills the whole tree, and each adapter's ``stop()`` (asyncio, trio, anyio on both
backends, Twisted in a subprocess). Real processes and cgroups; the leak check
fails a test that leaves a tree's cgroup behind."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

import childproc
from childproc import _cgroup, anyio_host, asyncio_host, trio_host

from .kids import run_on_a_reactor
from .procutil import alive, wait_until
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

    asyncio.run(main())


def _structured(flavour: str, main: Any) -> None:
    if flavour == "trio":
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
