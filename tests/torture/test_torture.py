"""Torture: childproc's promises under abuse.

Every case checks the same things at the end: each child's exit delivered
exactly once with its true status, no zombie, no fd growth, no stray SIGCHLD
disposition, and the host's own children kept their true returncodes. The
figures go to ``benchmarks/results/torture.json`` with ``--torture-report``; the docs render it.
A short run is part of the suite; ``--torture-long`` runs 100,000 children.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import random
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from childproc import (
    Child,
    ChildEvent,
    ClosedError,
    Context,
    ForkedContextError,
    ForkError,
    Hooks,
    SigchldOwner,
    _process,
)
from childproc._watchers import pidfd as pidfd_mod
from tests.integration.procutil import children, fd_room, open_fds, wait_until
from tests.torture.conftest import REPORT

SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV)


class Tally:
    """What each child should report and what it did report, per child handle
    (not per pid: with 100,000 children the kernel reuses pids many times)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expected: dict[Child, int] = {}
        self.got: dict[Child, list[int | None]] = {}

    def expect(self, child: Child, returncode: int) -> None:
        with self.lock:
            self.expected[child] = returncode

    def on_event(self, child: Child, event: ChildEvent) -> None:
        with self.lock:
            self.got.setdefault(child, []).append(event.returncode)

    def figures(self) -> dict[str, int]:
        with self.lock:
            lost = [p for p in self.expected if p not in self.got]
            dup = [p for p, v in self.got.items() if len(v) > 1]
            wrong = [p for p, v in self.got.items() if p in self.expected and v[0] != self.expected[p]]
            return {
                "children": len(self.expected),
                "lost": len(lost),
                "duplicated": len(dup),
                "wrong": len(wrong),
            }


def random_child(rng: random.Random) -> tuple[list[str], int]:
    """A program with a random lifetime that ends with a random code or signal."""
    naptime = rng.choice(["0", "0", "0.001", "0.005", "0.02"])
    if rng.random() < 0.7:
        code = rng.randrange(256)
        return ["/bin/sh", "-c", f"sleep {naptime}; exit {code}"], code
    sig = rng.choice(SIGNALS)
    return ["/bin/sh", "-c", f"ulimit -c 0; sleep {naptime}; kill -{sig.name[3:]} $$"], -sig


def fork_random(ctx: Context, tally: Tally, rng: random.Random, **kw: Any) -> Child | None:
    """A forked Python child ending with a random code or signal (no exec)."""
    code = rng.randrange(256) if rng.random() < 0.7 else -rng.choice(SIGNALS)
    child = ctx.fork(tally.on_event, **kw)
    if child is None:
        try:
            if code < 0:
                faulthandler.disable()  # the SIGSEGV is on purpose: no traceback dump
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                os.kill(os.getpid(), -code)
        finally:
            os._exit(code if code >= 0 else 0)
    tally.expect(child, code)
    return child


class Host:
    """The host's own children, run beside childproc: they must keep their codes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.wrong: list[tuple[int, int | None]] = []
        self.thread = threading.Thread(target=self._run, name="host-children")

    def _run(self) -> None:
        rng = random.Random(7)
        for _ in range(self.count):
            code = rng.randrange(1, 256)
            proc = subprocess.Popen(["/bin/sh", "-c", f"exit {code}"])
            got = proc.wait(60)
            if got != code:
                self.wrong.append((code, got))

    def __enter__(self) -> Host:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(300)


def settle(contexts: list[Context], tally: Tally, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while any(ctx.children for ctx in contexts) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(ctx.children for ctx in contexts), tally.figures()


def finish(report: Callable[..., None], tally: Tally, fds_before: set[int], **extra: object) -> None:
    _process.run_chores()
    # A child with no pidfd was watched by a peek thread, which holds the context's
    # waker (one fd) until it returns; its child is dead, so it returns at once.
    # Count fds once those threads are gone, not while one is still unwinding.
    assert wait_until(
        lambda: not any(t.name.startswith("childproc-peek-") for t in threading.enumerate()), 30
    ), "a peek thread outlived its child"
    figures = {
        **tally.figures(),
        "zombies": sum(1 for s in children().values() if s == "Z"),
        "fd_growth": len(open_fds() - fds_before),
        "sigchld_restored": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        **extra,
    }
    report(**figures)
    assert figures["lost"] == figures["duplicated"] == figures["wrong"] == 0, figures
    assert figures["zombies"] == 0 and figures["fd_growth"] == 0 and figures["sigchld_restored"], figures


@pytest.mark.timeout(1800)
def test_many_children_from_threads_and_contexts(scale: int, report: Callable[..., None]) -> None:
    fds_before = open_fds()
    tally = Tally()
    room = threading.Semaphore(256)  # children alive at once
    modes = [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD]
    contexts = []
    for mode in modes:
        ctx = Context(SigchldOwner.LIBXL)
        ctx.setmode(Hooks(chldowner=mode))
        ctx.start_dispatch_thread()
        contexts.append(ctx)

    def released(child: Child, event: ChildEvent) -> None:
        tally.on_event(child, event)
        room.release()

    def worker(seed: int, n: int) -> None:
        rng = random.Random(seed)
        for i in range(n):
            room.acquire()
            ctx = contexts[(seed + i) % len(contexts)]
            if i % 10 == 0:  # some forked Python children, the rest exec'd programs
                code = rng.randrange(256)
                child = ctx.fork(released)
                if child is None:
                    os._exit(code)
                tally.expect(child, code)
            else:
                argv, code = random_child(rng)
                tally.expect(ctx.spawn(argv, released), code)

    threads = [threading.Thread(target=worker, args=(s, scale // 4)) for s in range(4)]
    with Host(count=max(20, scale // 100)) as host:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    settle(contexts, tally)
    for ctx in contexts:
        ctx.close()
    finish(report, tally, fds_before, host_children=host.count, host_wrong=len(host.wrong))
    assert host.wrong == []


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["LIBXL_ALWAYS", "SELECTIVE_REAP-scan"])
def test_sigchld_storm_while_spawning(
    mode: str, scale: int, report: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode.endswith("scan"):
        monkeypatch.setattr(pidfd_mod, "_supported", False)
    fds_before = open_fds()
    tally = Tally()
    stop = threading.Event()
    storms = [0]

    def storm() -> None:
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGCHLD)
            storms[0] += 1

    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=SigchldOwner[mode.split("-", maxsplit=1)[0]]))
    t = threading.Thread(target=storm)
    t.start()
    try:
        rng = random.Random(1)
        for i in range(scale // 5):
            argv, code = random_child(rng)
            tally.expect(ctx.spawn(argv, tally.on_event), code)
            if i % 50 == 0:
                ctx.dispatch()
        while ctx.children:
            ctx.wait(1)
    finally:
        stop.set()
        t.join()
        ctx.close()
    finish(report, tally, fds_before, sigchld_storm_signals=storms[0])


@pytest.mark.timeout(900)
def test_callbacks_that_raise_reenter_and_close(scale: int, report: Callable[..., None]) -> None:
    fds_before = open_fds()
    tally = Tally()
    rng = random.Random(3)
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
    n = scale // 5
    raised = 0

    def on_event(child: Child, event: ChildEvent) -> None:
        tally.on_event(child, event)
        delivered = len(tally.got)
        if delivered < n and delivered % 7 == 0:  # re-enter: make another child from the callback
            argv, code = random_child(rng)
            tally.expect(ctx.spawn(argv, on_event), code)
        if delivered % 3 == 0:
            raise RuntimeError("callback failed on purpose")

    for _ in range(n // 2):
        argv, code = random_child(rng)
        tally.expect(ctx.spawn(argv, on_event), code)
    while ctx.children:
        try:
            ctx.wait(1)
        except RuntimeError:
            raised += 1
    ctx.close()

    # close() from inside a callback, mid-dispatch, with owned children still running.
    closer = Context(SigchldOwner.LIBXL)
    closer.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
    owned = [closer.spawn(["/bin/sleep", "30"], kill_on_close=True) for _ in range(20)]
    quick = [
        closer.spawn(["/bin/sh", "-c", "exit 5"], lambda c, e: closer.close(), kill_on_close=True)
        for _ in range(5)
    ]
    with pytest.raises(ClosedError):
        while True:
            closer.wait(1)
    assert all(c.state.value == "exited" for c in owned)
    finish(report, tally, fds_before, callbacks_raised=raised, closed_mid_dispatch=len(quick) + len(owned))
    assert raised > 0


@pytest.mark.timeout(900)
def test_fork_failure_mid_burst(scale: int, report: Callable[..., None]) -> None:
    fds_before = open_fds()
    tally = Tally()
    rng = random.Random(4)
    failures = 0

    def flaky_fork(user: object) -> int:
        if rng.random() < 0.1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return os.fork()

    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(
        Hooks(
            chldowner=SigchldOwner.LIBXL_ALWAYS, fork_replacement=flaky_fork, reaped_callback=lambda *a: True
        )
    )
    for _ in range(scale // 10):
        try:
            fork_random(ctx, tally, rng)
        except ForkError as e:
            assert e.errno == errno.EAGAIN
            failures += 1
        if len(tally.expected) % 50 == 0:
            ctx.dispatch()
    while ctx.children:
        ctx.wait(1)
    assert set(tally.got) == set(tally.expected)  # a failed fork left no registry entry
    ctx.close()
    finish(report, tally, fds_before, injected_fork_failures=failures)
    assert failures > 0


@pytest.mark.timeout(900)
def test_fd_exhaustion_during_pidfd_watching(scale: int, report: Callable[..., None]) -> None:
    fds_before = open_fds()
    tally = Tally()
    rng = random.Random(5)
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
    try:
        with fd_room(40):
            without_pidfd = spawn_many(ctx, tally, rng, scale // 10)
        while ctx.children:
            ctx.wait(1)
    finally:
        ctx.close()
    finish(report, tally, fds_before, children_without_pidfd=without_pidfd)
    assert without_pidfd > 0


def spawn_many(ctx: Context, tally: Tally, rng: random.Random, n: int) -> int:
    """Spawn ``n`` random short-lived children, dispatching now and then;
    return how many got no pidfd."""
    without_pidfd = 0
    for i in range(n):
        argv, code = random_child(rng)
        child = ctx.spawn(["/bin/sh", "-c", "sleep 0.05; " + argv[2]], tally.on_event)
        without_pidfd += child.pidfd is None
        tally.expect(child, code)
        if i % 25 == 0:
            ctx.dispatch()
    return without_pidfd


@pytest.mark.timeout(900)
def test_forking_while_another_thread_dispatches(scale: int, report: Callable[..., None]) -> None:
    fds_before = open_fds()
    tally = Tally()
    ctx = Context(SigchldOwner.LIBXL)
    ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))
    ctx.start_dispatch_thread()
    stop = threading.Event()
    rng = random.Random(6)

    def churn() -> None:  # keeps the dispatch thread busy delivering
        while not stop.is_set():
            argv, code = random_child(rng)
            tally.expect(ctx.spawn(argv, tally.on_event), code)
            time.sleep(0.001)

    churner = threading.Thread(target=churn)
    churner.start()
    bad = 0
    forks = max(50, scale // 50)
    try:
        for _ in range(forks):
            pid = os.fork()
            if pid == 0:  # the child must start clean, whatever the parent was doing
                ok = False
                try:
                    snap = _process.snapshot()
                    clean = not snap["handler_installed"] and snap["owned_pids"] == 0
                    try:
                        ctx.dispatch()
                    except ForkedContextError:
                        pass
                    else:
                        clean = False
                    with Context(SigchldOwner.LIBXL) as fresh:
                        grandchild = fresh.spawn(["/bin/sh", "-c", "exit 3"])
                        ok = clean and grandchild.wait(10) is not None and grandchild.returncode == 3
                finally:
                    os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            bad += os.waitstatus_to_exitcode(status) != 0
    finally:
        stop.set()
        churner.join()
    settle([ctx], tally)
    ctx.close()
    finish(report, tally, fds_before, forks_mid_dispatch=forks, unclean_children=bad)
    assert bad == 0


def test_report_is_readable() -> None:
    assert REPORT.exists()
    data = json.loads(REPORT.read_text())
    assert isinstance(data, dict) and "short" in data
