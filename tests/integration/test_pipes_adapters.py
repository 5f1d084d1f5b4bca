"""Pipes through the adapters: communicate(), run() and streams on asyncio (default
loop and uvloop), trio and Twisted; cancellation, timeouts, descendants holding pipes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import uvloop

import childproc
from childproc import PIPE, STDOUT, Hooks, SigchldOwner, anyio_host, asyncio_host, trio_host

from .kids import run_on_a_reactor
from .procutil import alive
from .test_hostile import default_sigint

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module", autouse=True)
def _libuv_signal_pipe() -> None:
    """libuv keeps a process-wide signal pipe from its first use: open it before the
    per-test leak check takes its baseline."""

    async def once() -> None:
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()

    uvloop.run(once())


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return (uvloop.run if loop == "uvloop" else asyncio.run)(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_run_captures_feeds_and_checks(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            r = await ctx.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True)
            assert isinstance(r, subprocess.CompletedProcess)
            assert (r.returncode, r.stdout, r.stderr, r.event.returncode) == (3, b"out\n", b"err\n", 3)
            data = os.urandom(1 << 20) * 16
            r = await ctx.run(["cat"], input=data, capture_output=True)
            assert r.stdout == data
            r = await ctx.run(["/bin/sh", "-c", "printf 'a\\r\\n'"], capture_output=True, text=True)
            assert r.stdout == "a\n"
            with pytest.raises(subprocess.CalledProcessError) as info:
                await ctx.run(["/bin/sh", "-c", "exit 5"], check=True)
            assert isinstance(info.value, childproc.ChildprocError) and info.value.returncode == 5
            assert ctx.context.children == frozenset()

    run_on(loop, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_grandchild_holding_the_pipe_holds_nobody_up(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            t0 = time.monotonic()
            r = await ctx.run(["/bin/sh", "-c", "sleep 30 & echo $!; echo hi"], capture_output=True)
            took = time.monotonic() - t0
            grandchild, word = r.stdout.split()
            os.kill(int(grandchild), signal.SIGKILL)
            assert word == b"hi" and took < 1.5, took

    run_on(loop, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_timeout_and_cancellation_kill_reap_and_close(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            with pytest.raises(childproc.TimeoutExpired) as info:
                await ctx.run(["/bin/sh", "-c", "echo part; exec sleep 30"], capture_output=True, timeout=0.3)
            assert info.value.output in (None, b"part\n")  # (None only on a very slow machine)
            assert info.value.event is not None and info.value.event.returncode == -signal.SIGKILL
            task = asyncio.ensure_future(ctx.run(["sleep", "30"], capture_output=True, input=b"x"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ctx.context.children == frozenset()  # killed and reaped before it propagated
            # (the leak check finds any pipe left open)

    run_on(loop, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_communicate_timeout_then_again_loses_nothing(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "echo a; sleep 0.6; echo b"], stdout=PIPE, stderr=STDOUT)
            with pytest.raises(childproc.TimeoutExpired) as info:
                await child.communicate(timeout=0.2)
            assert b"a\n".startswith(info.value.output or b"") and child.returncode is None
            assert await child.communicate() == (b"a\nb\n", None)
            assert child.returncode == 0
            assert await child.communicate() == (b"a\nb\n", None)  # (again: as Popen's)

    run_on(loop, main)


@pytest.mark.timeout(120)
def test_many_runs_at_once() -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            results = await asyncio.gather(
                *(ctx.run(["/bin/sh", "-c", f"echo {i}"], capture_output=True) for i in range(64))
            )
            assert [int(r.stdout) for r in results] == list(range(64))

    asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_streams_talk_to_the_child(loop: str) -> None:
    """``child.stdin`` is an asyncio StreamWriter, ``stdout``/``stderr`` StreamReaders:
    a conversation line by line, 8 MiB through with drain(), EOF on close()."""

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "read x; echo got $x; exec cat"], stdin=PIPE, stdout=PIPE)
            assert child.stderr is None
            stdin, stdout = child.stdin, child.stdout
            assert isinstance(stdin, asyncio.StreamWriter) and isinstance(stdout, asyncio.StreamReader)
            stdin.write(b"hello\n")
            await stdin.drain()
            assert await stdout.readline() == b"got hello\n"
            data = os.urandom(1 << 20) * 8

            async def reader() -> bytes:
                return await stdout.read()

            got = asyncio.ensure_future(reader())
            stdin.write(data)
            await stdin.drain()
            stdin.close()
            await stdin.wait_closed()
            assert await got == data
            assert (await child.wait()).returncode == 0

    run_on(loop, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_communicate_after_using_the_streams(loop: str) -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "echo one; cat; echo two"], stdin=PIPE, stdout=PIPE)
            assert child.stdout is not None
            assert await child.stdout.readline() == b"one\n"
            out, err = await child.communicate(b"middle\n")
            assert (out, err) == (b"middle\ntwo\n", None)
            assert child.returncode == 0

    run_on(loop, main)


# -- Twisted: in a subprocess, because a reactor runs once per process -------------------
@pytest.mark.timeout(90)
def test_twisted_run_returns_a_deferred_of_completed_process() -> None:
    body = """
        r = yield ctx.run(["/bin/sh", "-c", "echo hi; echo err >&2; exit 3"], capture_output=True)
        out["run"] = (r.returncode, r.stdout, r.stderr, r.event.returncode)
        data = os.urandom(1 << 20) * 8
        r = yield ctx.run(["cat"], input=data, capture_output=True)
        out["big"] = r.stdout == data
        t0 = time.monotonic()
        r = yield ctx.run(["/bin/sh", "-c", "sleep 30 & echo $!; echo hi"], capture_output=True)
        os.kill(int(r.stdout.split()[0]), signal.SIGKILL)
        out["grandchild"] = time.monotonic() - t0 < 1.5
        try:
            yield ctx.run(["/bin/sh", "-c", "echo part; exec sleep 30"], capture_output=True, timeout=0.3)
        except childproc.TimeoutExpired as e:
            out["timeout"] = (e.output, e.event.returncode)
        try:
            yield ctx.run(["/bin/sh", "-c", "exit 4"], check=True)
        except childproc.CalledProcessError as e:
            out["check"] = e.returncode
        d = ctx.run(["sleep", "30"], capture_output=True)
        yield task_sleep(0.1)
        d.cancel()
        try:
            yield d
        except defer.CancelledError:
            out["cancelled"] = True
        while ctx.context.children:  # the kill's exit arrives through the reactor
            yield task_sleep(0.01)
    """
    check = """
want = {"run": (3, b"hi\\n", b"err\\n", 3), "big": True, "grandchild": True, "timeout": (b"part\\n", -9),
        "check": 4, "cancelled": True}
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
sys.exit(0 if out == want and len(fds) < 8 else f"{out} fds={fds}")
"""
    run_on_a_reactor(body, check, timeout=80)


# -- trio, and anyio on both backends: one structured adapter ------------------------------
STRUCTURED = ["trio", "anyio-asyncio", "anyio-trio"]


def _run_structured(flavour: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``main`` on trio, or on anyio with the flavour's backend."""
    if flavour == "trio":
        trio.run(main)
    else:
        anyio.run(main, backend=flavour.split("-")[1])


async def _send(stream: Any, data: bytes) -> None:
    if isinstance(stream, asyncio.StreamWriter):
        stream.write(data)
        await stream.drain()
        return
    await (stream.send_all(data) if hasattr(stream, "send_all") else stream.send(data))


async def _receive(stream: Any) -> bytes:
    """The next bytes, b"" at EOF (trio's way; anyio raises EndOfStream)."""
    if isinstance(stream, asyncio.StreamReader):
        return await stream.read(65536)
    if hasattr(stream, "receive_some"):
        return bytes(await stream.receive_some(65536))
    try:
        return bytes(await stream.receive())
    except anyio.EndOfStream:
        return b""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_adapters_run_communicate_and_streams(flavour: str) -> None:
    host: Any = trio_host if flavour == "trio" else anyio_host

    async def main() -> None:
        async with host.open_context() as ctx:
            assert (await ctx.spawn(["/bin/sh", "-c", "exit 3"]).wait()).returncode == 3
            r = await ctx.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 2"], capture_output=True)
            assert isinstance(r, subprocess.CompletedProcess)
            assert (r.returncode, r.stdout, r.stderr) == (2, b"out\n", b"err\n")
            data = os.urandom(1 << 20) * 8
            assert (await ctx.run(["cat"], input=data, capture_output=True)).stdout == data
            t0 = time.monotonic()
            r = await ctx.run(["/bin/sh", "-c", "sleep 30 & echo $!; echo hi"], capture_output=True)
            os.kill(int(r.stdout.split()[0]), signal.SIGKILL)
            assert r.stdout.split()[1] == b"hi" and time.monotonic() - t0 < 1.5
            with pytest.raises(childproc.TimeoutExpired) as info:
                await ctx.run(["/bin/sh", "-c", "echo part; exec sleep 30"], capture_output=True, timeout=0.3)
            assert info.value.output in (None, b"part\n") and info.value.event is not None
            with anyio.move_on_after(0.1):
                await ctx.run(["sleep", "30"], capture_output=True)
            assert ctx.context.children == frozenset()  # cancelled: killed and reaped
            child = ctx.spawn(["/bin/sh", "-c", "echo a; sleep 0.6; echo b"], stdout=PIPE)
            with pytest.raises(childproc.TimeoutExpired):
                await child.communicate(timeout=0.2)
            assert await child.communicate() == (b"a\nb\n", None)
            assert await child.communicate() == (b"a\nb\n", None)  # (again: as Popen's)
            talker = ctx.spawn(["cat"], stdin=PIPE, stdout=PIPE)
            assert talker.stdin is not None and talker.stdout is not None
            await _send(talker.stdin, b"ping")
            assert await _receive(talker.stdout) == b"ping"
            await talker.stdin.aclose()
            assert await _receive(talker.stdout) == b""
            await talker.stdout.aclose()
            assert (await talker.wait()).returncode == 0

    _run_structured(flavour, main)


@pytest.mark.timeout(30)
class _Abort(BaseException):
    pass


@pytest.mark.parametrize("raised", ["Exception", "StopIteration", "BaseException"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "in-run"])
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_adapters_raise_a_callbacks_exception_out_of_the_block(
    flavour: str, busy: bool, raised: str
) -> None:
    """The serving task dispatches; an exception from a child's callback ends the
    task group and comes out of ``open_context()``'s block, the same on every
    backend, and the context is left closed and clean. Also a StopIteration (which
    an asyncio Future refuses to carry; it comes out as the RuntimeError a task
    makes of it) and a BaseException that is no Exception."""
    host: Any = trio_host if flavour == "trio" else anyio_host

    class Boom(Exception):
        pass

    error: type[BaseException] = {"Exception": Boom, "StopIteration": StopIteration, "BaseException": _Abort}[
        raised
    ]

    def bad(child: childproc.Child, event: childproc.ChildEvent) -> None:
        raise error(child.pid)

    held: list[Any] = []

    async def main() -> None:
        async with host.open_context() as ctx:
            held.append(ctx)
            ctx.spawn(["/bin/true"], on_event=bad)
            if busy:  # a run() under way when the task group is cancelled: its child is
                # killed and reaped though the serving task is gone (it hung for good once)
                await ctx.run(["/bin/sleep", "10"])
            await (trio.sleep(10) if flavour == "trio" else anyio.sleep(10))
            raise AssertionError("the callback's exception did not end the block")

    t0 = time.monotonic()
    with pytest.raises(BaseException) as info:
        _run_structured(flavour, main)
    leaves = getattr(info.value, "exceptions", (info.value,))  # (an exception group: 3.10 has none built in)
    got = [e.__cause__ if type(e) is RuntimeError and e.__cause__ is not None else e for e in leaves]
    assert [type(e) for e in got] == [error], info.value
    assert time.monotonic() - t0 < 5
    assert held[0].context.closed


@pytest.mark.timeout(30)
def test_asyncio_spawn_takes_the_stream_limit_as_create_subprocess_exec_does() -> None:
    line = ["/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo"]

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            async with await ctx.spawn(line, stdout=PIPE, limit=1 << 20) as child:
                assert child.stdout is not None and len(await child.stdout.readline()) == 200_001
            async with await ctx.spawn(line, stdout=PIPE) as child:  # (64 KiB, asyncio's)
                assert child.stdout is not None
                with pytest.raises(ValueError):
                    await child.stdout.readline()
            with pytest.raises(childproc.InvalidArgumentError, match="limit"):
                ctx.spawn(["true"], limit=0)

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raised", ["CalledProcessError", "ValueError", "KeyboardInterrupt"])
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_blocks_raise_their_own_exception_not_a_group(flavour: str, raised: str) -> None:
    """What the block raises comes out of ``open_context()`` as itself, as it would from
    the host's own API, not in the exception group the nursery wraps it in: a ported
    program's ``except CalledProcessError`` (or a caller's) still matches. Wrong
    arguments to ``open_context`` are an InvalidArgumentError (a ValueError)."""
    host: Any = trio_host if flavour == "trio" else anyio_host
    if raised == "KeyboardInterrupt" and flavour == "anyio-asyncio" and sys.version_info < (3, 11):
        pytest.skip("asyncio.run on 3.10 turns a Ctrl-C into a CancelledError (anyio's own too)")

    async def main() -> None:
        async with host.open_context() as ctx:
            if raised == "CalledProcessError":
                await ctx.run(["/bin/sh", "-c", "exit 4"], check=True)
            elif raised == "ValueError":
                raise ValueError("the block's own")
            else:
                await ctx.run(["/bin/sh", "-c", "kill -INT $PPID; sleep 5"])  # (a Ctrl-C)

    error = {"CalledProcessError": subprocess.CalledProcessError, "ValueError": ValueError}.get(
        raised, KeyboardInterrupt
    )
    with pytest.raises(error) as info:
        _run_structured(flavour, main)
    assert type(info.value) is error or isinstance(info.value, subprocess.CalledProcessError)

    async def both() -> None:
        async with host.open_context(SigchldOwner.PIDFD, hooks=Hooks()):
            pass

    with pytest.raises(childproc.InvalidArgumentError, match="either mode= or hooks="):
        _run_structured(flavour, both)


@pytest.mark.timeout(30)
def test_the_trio_adapter_under_asyncio_says_which_adapter_to_use() -> None:
    async def main() -> None:
        async with trio_host.open_context():
            pass

    with pytest.raises(childproc.StateError, match="asyncio_host"):
        asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_awaiting_spawn_gives_the_child_as_create_subprocess_exec_does(loop: str) -> None:
    """``proc = await asyncio.create_subprocess_exec(...)`` ports by changing the call:
    awaiting the handle gives it at once (it used to wait for the exit, which with a
    full pipe never came: a new user's trial hung there)."""

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            proc = await ctx.spawn(["seq", "1", "50000"], stdout=PIPE)  # (more than a pipe holds)
            assert isinstance(proc, asyncio_host.AsyncChild)
            assert proc.stdout is not None
            lines = [line async for line in proc.stdout]
            assert len(lines) == 50000 and lines[-1] == b"50000\n"
            assert (await proc.wait()).returncode == 0

    run_on(loop, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", ["asyncio", *STRUCTURED])
def test_async_with_a_child_closes_its_pipes_and_waits_or_kills(flavour: str, tmp_path: Path) -> None:
    """``async with await open_process(...) as proc:`` (trio's, anyio's) ports by changing
    the call: the block's end closes the pipes and waits for the exit; a cancelled
    block kills the child first."""
    host: Any = {"asyncio": asyncio_host, "trio": trio_host}.get(flavour, anyio_host)
    counted = tmp_path / "count"

    async def main() -> None:
        async with host.open_context() as ctx:
            async with await ctx.spawn(["sh", "-c", "read x; exit 5"], stdin=PIPE) as proc:
                assert proc.args == ["sh", "-c", "read x; exit 5"] and proc.poll() is None  # (trio's)
            assert proc.returncode == 5 and proc.poll() == 5
            # Streams in use: closed too (trio's own hung here), the read ends first.
            async with await ctx.spawn(["cat"], stdin=PIPE, stdout=PIPE) as cat:
                await _send(cat.stdin, b"hi\n")
                assert await _receive(cat.stdout) == b"hi\n"
            assert cat.returncode == 0
            async with await ctx.spawn(["sh", "-c", f"wc -c > {counted}"], stdin=PIPE) as wc:
                wc.child.stdin.write(b"abc")  # (the sync file object, buffered: written at the end)
            assert counted.read_text().strip() == "3"
            if flavour == "asyncio":  # written but not drained: it goes out before the close
                async with await ctx.spawn(["sh", "-c", f"wc -c > {counted}"], stdin=PIPE) as wc:
                    wc.stdin.write(b"x" * 300_000)
                assert wc.returncode == 0 and counted.read_text().strip() == "300000"
            with anyio.move_on_after(0.3) as scope:
                async with await ctx.spawn(["sleep", "30"], stdin=PIPE, stdout=PIPE, stderr=PIPE) as sleeper:
                    assert sleeper.stdin and sleeper.stdout and sleeper.stderr  # (streams made)
                    await anyio.sleep(30)
            assert scope.cancelled_caught  # (every stream closed all the same: the leak check)
            if flavour != "asyncio":  # (waited for, shielded, as anyio's Process does; asyncio's
                assert sleeper.returncode == -signal.SIGKILL  # own cancellation comes once)
            assert (await sleeper.wait()).returncode == -signal.SIGKILL
            # aclose() beside a communicate() in another task: the pipes are its to close
            # (closed under it, their numbers went to the next child, whose reads it took).
            talker = await ctx.spawn(["sh", "-c", "echo one; sleep 0.5; echo two"], stdout=PIPE)
            async with anyio.create_task_group() as group:
                said: list[Any] = []

                async def talk() -> None:
                    said.append(await talker.communicate())

                group.start_soon(talk)
                await anyio.sleep(0.2)
                group.start_soon(talker.aclose)
                await anyio.sleep(0.05)
                other = await ctx.spawn(["sh", "-c", "sleep 0.3; echo other"], stdout=PIPE)
                assert await other.communicate() == (b"other\n", None)
            assert said == [(b"one\ntwo\n", None)]

    if flavour == "asyncio":
        anyio.run(main, backend="asyncio")
    else:
        _run_structured(flavour, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("body", ["wait", "tree", "generator"])
def test_an_asyncio_cancelled_async_with_kills_the_child_at_once(loop: str, body: str) -> None:
    """asyncio cancels a task once (anyio's and trio's scopes cancel again inside the
    block's end): a block cancelled by ``wait_for`` (or Ctrl-C under ``asyncio.run``)
    must kill the child, and its tree, not wait for its own exit in ``aclose()`` (a new
    user's trial waited for a ``sleep 30`` to end). The same for a block in an async
    generator closed on the way out (``GeneratorExit``), as ``asyncio.run`` closes them."""
    handles: list[asyncio_host.AsyncChild] = []
    argv = ["sh", "-c", "sleep 30 & wait"] if body == "tree" else ["sleep", "30"]

    async def block(ctx: asyncio_host.AsyncContext) -> AsyncGenerator[None, None]:
        async with await ctx.spawn(argv, stdout=PIPE, kill_tree=body == "tree") as child:
            handles.append(child)
            if body == "generator":
                yield
            await child.wait()

    async def run_block(ctx: asyncio_host.AsyncContext) -> None:
        gen = block(ctx)
        try:
            async for _ in gen:
                await asyncio.sleep(30)  # (cancelled here: the generator is closed, not cancelled)
        finally:
            await gen.aclose()

    async def main() -> float:
        async with asyncio_host.open_context() as ctx:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(run_block(ctx), 0.3)
            left = time.monotonic() - t0
            assert (await handles[0].wait()).returncode == -signal.SIGKILL
            return left

    assert run_on(loop, main) < 5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["communicate", "run"])
@pytest.mark.parametrize("flavour", ["trio", "anyio-trio"])
def test_a_ctrl_c_in_communicate_is_a_keyboard_interrupt(flavour: str, call: str) -> None:
    """trio wraps whatever a nursery's tasks raise, a lone KeyboardInterrupt too, and
    ``communicate()`` runs its pipes in a nursery of its own: a Ctrl-C there must come
    out as the KeyboardInterrupt a caller's ``except`` catches, not a group (a new
    user's trial found it wrapped). ``communicate()`` leaves the child running and a
    later call loses nothing; ``run()`` kills and reaps it first."""
    host: Any = trio_host if flavour == "trio" else anyio_host
    main_thread = threading.main_thread().ident
    argv = ["sh", "-c", "echo hi; exec sleep 30"]

    async def main() -> None:
        async with host.open_context() as ctx:
            child = ctx.spawn(argv, stdout=PIPE) if call == "communicate" else None
            timer = threading.Timer(0.5, signal.pthread_kill, (main_thread, signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    if child is not None:
                        await child.communicate()
                    else:
                        await ctx.run(argv, capture_output=True)
            finally:
                timer.cancel()
                timer.join()
            if child is None:
                assert not ctx.context.children  # killed and reaped before the interrupt went on
                return
            assert alive(child.pid)
            child.kill()
            out, err = await child.communicate(timeout=10)
            assert (out, err) == (b"hi\n", None)
            assert child.returncode == -signal.SIGKILL

    with default_sigint():
        _run_structured(flavour, main)


def test_anyio_streams_are_anyio_byte_streams() -> None:
    async def main() -> None:
        async with anyio_host.open_context() as ctx:
            child = ctx.spawn(["cat"], stdin=PIPE, stdout=PIPE)
            assert isinstance(child.stdin, anyio.abc.ByteSendStream)
            assert isinstance(child.stdout, anyio.abc.ByteReceiveStream)
            await child.stdin.aclose()
            with pytest.raises(anyio.EndOfStream):
                await child.stdout.receive()
            await child.stdout.aclose()
            await child.wait()

    anyio.run(main)


@pytest.mark.timeout(60)
def test_asyncio_streams_of_a_closed_context_leave_the_loop_clean() -> None:
    """A context closed while a stream still watched its pipe: the number is taken
    off the loop before it is closed, so a later pipe given the same number works."""

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "echo one; sleep 30"], stdout=PIPE, kill_on_close=True)
            assert child.stdout is not None
            assert await child.stdout.readline() == b"one\n"
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "echo two"], stdout=PIPE)
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 5) == b"two\n"
            await child.wait()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_asyncio_communicate_through_streams_after_a_timeout_finishes_the_input() -> None:
    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/sh", "-c", "sleep 0.3; exec cat"], stdin=PIPE, stdout=PIPE)
            assert child.stdout is not None  # the streams are in use
            data = os.urandom(1 << 20) * 4
            with pytest.raises(childproc.TimeoutExpired):
                await child.communicate(data, timeout=0.05)  # (cat starts reading later)
            out, _ = await child.communicate(timeout=10)
            assert out == data and child.returncode == 0

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_anyio_callbacks_can_use_anyio_under_plain_asyncio_run() -> None:
    """On asyncio the loop calls the dispatch (no task): an on_event callback that makes
    anyio objects still finds its backend, also under asyncio.run() (not anyio.run())."""
    made: list[object] = []

    def on_event(child: childproc.Child, event: childproc.ChildEvent) -> None:
        made.append(anyio.current_time())  # asks anyio (through sniffio) which loop runs

    async def main() -> None:
        async with anyio_host.open_context() as ctx:
            child = ctx.spawn(["/bin/true"], on_event=on_event)
            assert (await child.wait()).returncode == 0
            assert (await ctx.run(["/bin/true"])).returncode == 0

    asyncio.run(main())
    assert len(made) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["PIDFD", "MAINLOOP"])
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_run_cancelled_from_outside_reaps_and_leaves(flavour: str, mode: str) -> None:
    """The block cancelled from outside while a run() is under way: the serving task
    is cancelled too, so run() reaps its killed child itself, without ever blocking
    the loop (in MAINLOOP the exit comes only when the host's own task reports it)."""
    host: Any = trio_host if flavour == "trio" else anyio_host
    lib: Any = trio if flavour == "trio" else anyio
    owner = getattr(childproc.SigchldOwner, mode)
    held: list[Any] = []
    left: list[float] = []

    async def reporter() -> None:  # MAINLOOP's host: reports from a task of its own
        while True:
            await lib.sleep(0.01)
            if mode == "MAINLOOP" and held and not held[0].context.closed:
                held[0].context.sigchld_occurred()

    async def main() -> None:
        group = lib.open_nursery() if flavour == "trio" else anyio.create_task_group()
        async with group as outer:
            outer.start_soon(reporter)
            t0 = time.monotonic()
            with lib.move_on_after(0.3):
                async with host.open_context(owner) as ctx:
                    held.append(ctx)
                    await ctx.run(["/bin/sleep", "10"])
            left.append(time.monotonic() - t0)
            outer.cancel_scope.cancel()

    _run_structured(flavour, main)
    assert left and left[0] < 5, left
    assert held[0].context.closed and held[0].context.children == frozenset()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_run_in_an_already_cancelled_scope_returns(flavour: str) -> None:
    """The block entered inside a scope that is already cancelled: the serving task
    never dispatches, and run() (cancelled at once) kills and reaps its child itself."""
    host: Any = trio_host if flavour == "trio" else anyio_host
    lib: Any = trio if flavour == "trio" else anyio
    left: list[float] = []

    async def main() -> None:
        t0 = time.monotonic()
        with lib.CancelScope() as scope:
            scope.cancel()
            async with host.open_context() as ctx:
                try:
                    await ctx.run(["/bin/sleep", "10"])
                finally:
                    left.append(time.monotonic() - t0)
        assert ctx.context.closed

    _run_structured(flavour, main)
    assert left and left[0] < 5, left


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_structured_communicate_to_a_child_that_leaves_input_unread(flavour: str) -> None:
    """The child exits with most of its input unwritten: the exit closes stdin while
    the writer task may be ready to run, which must then write nothing (it wrote to
    the closed number: EBADF out of communicate(), or into whatever file had it)."""
    host: Any = trio_host if flavour == "trio" else anyio_host

    async def main() -> None:
        async with host.open_context() as ctx:

            async def worker() -> None:
                for _ in range(10):
                    child = ctx.spawn(["head", "-c", "70000"], stdin=childproc.PIPE, stdout=childproc.PIPE)
                    out, _ = await child.communicate(b"x" * 1_000_000, timeout=10)
                    assert out == b"x" * 70000

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(worker)

    _run_structured(flavour, main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", STRUCTURED)
def test_a_callback_error_ends_a_child_block_that_waits(flavour: str) -> None:
    """A callback raises: the serving task ends and the block is cancelled. A child's
    'async with' block then kills its child and waits for the exit, shielded: nobody
    dispatched any more, and it waited for ever (it dispatches itself now)."""
    host: Any = trio_host if flavour == "trio" else anyio_host
    pids: list[int] = []

    def boom(child: object, event: object) -> None:
        raise RuntimeError("callback failed")

    async def main() -> None:
        async with host.open_context() as ctx:
            ctx.spawn(["/bin/true"], on_event=boom)
            async with ctx.spawn(["sleep", "30"]) as child:
                pids.append(child.pid)
                await child.wait()

    t0 = time.monotonic()
    with pytest.raises(BaseException) as info:  # (the nursery's group, holding it)
        _run_structured(flavour, main)
    assert "callback failed" in repr(info.value) and time.monotonic() - t0 < 10
    assert not alive(pids[0])
