"""Throughput: spawn and reap N short children, at concurrency 1 and 64.

Two kinds of child: ``/bin/true`` through the fastest exec path each contender
has (childproc: ``Context.spawn``, i.e. ``posix_spawn``), and a bare
``fork()`` whose child ``_exit``\\ s at once. Every contender runs interleaved
with the raw floor (no library: ``os.posix_spawn``/``os.fork`` and
``os.waitpid``) in each round, in the order floor, contender, contender, floor
(so a drift of the machine's speed cancels out); results are reported as
throughput relative to the floor of the same round (1.00 = as fast as no
library at all): the median of the rounds, with the quartiles in the JSON.

Five reference rows bound what a library can reach:

* ``raw floor (A/A)``: the floor measured against itself, the same way. Its
  spread is the machine's noise; no ratio is meaningful closer than that.
* ``pidfd floor (no library)``: the least any watcher that never steals
  children can do: a dozen lines of ``pidfd_open``, ``epoll`` and
  ``waitid(P_PIDFD)`` with a dict of callbacks, no checks, no locks. What
  childproc's pidfd modes cost beyond this is the library; what this costs
  beyond the raw floor is the kernel's pidfd path and Python itself.
* ``promise floor (no structure)``: the pidfd floor plus every system call and
  record childproc's promise and API require per child (see
  :func:`promise_floor`), written out in one loop: what they cost with no
  structure at all. What childproc's pidfd modes cost beyond this row is
  their structure.
* ``SIGCHLD floor (no library)``: the same for the signal-driven reapers
  (LIBXL, LIBXL_ALWAYS): ``SIGCHLD`` caught, :func:`signal.set_wakeup_fd` on a
  pipe, ``select`` on it and ``waitpid(-1, WNOHANG)``. The wake-up fd is what
  makes it correct: the interpreter writes it the moment the signal arrives,
  whereas a Python handler writing the pipe itself runs only at the next
  bytecode, so a signal landing just before ``select()`` blocks would wait for
  its timeout (one child in a thousand did, here). childproc, a guest, may not
  take the wake-up fd; its pidfds close that window instead.
* ``SIGCHLD+pidfd floor (no library)``: what LIBXL_ALWAYS does (and LIBXL, but
  for putting its handler in and taking it out for every child), as a guest
  must, with nothing else: a Python handler that writes a self-pipe,
  a pidfd per child beside it in ``epoll`` (the pidfd closes the handler's
  window), and ``waitpid(-1, WNOHANG)`` until nothing is left on each
  wake-up. What those modes cost beyond this is the library; what this costs
  beyond the SIGCHLD floor is the price of not taking the wake-up fd.

Every row spawns with the same environment: one plain ``dict`` of this
process's environment (``ENV``), built once at import, given to the floors'
``os.posix_spawn`` and to every contender (``ctx.spawn(..., env=ENV)``, the
peers' ``env=``). ``posix_spawn`` converts whatever mapping it gets into a C
array on every call, and what it costs depends on the mapping: ``os.environb``
is a Python-level mapping read through a method call per variable, a plain
``dict`` is read in C. A floor passing ``os.environb`` while ``ctx.spawn``
passes a plain dict (as it does by default) would charge the floor for its
argument, not for its mechanism; with one dict for all, every row pays the
same conversion.

The floors run only in a process whose children are all their own (this
benchmark runs one contender at a time), and the two SIGCHLD floors only where
SIGCHLD's handler is one Python can put back (not one installed from C).

A second table gives the floor's CPU time per child (this process and its
children) divided by the contender's, so that there too 1.00 means no
overhead and lower is worse; CPU time is steadier than wall time on a shared
machine. A third gives this process's minor page faults per child: after a
``fork()`` every page the parent writes faults, and is copied while a child
still shares it, so for the fork rows this column is where the time beyond
the floor goes (each page a Python object lives on, once per fork). A fourth
splits the main thread's wall time per child, from ``/proc/self/schedstat``:
on a CPU, and runnable but waiting for one. The rest is asleep. On a machine
whose CPUs the children keep busy (spawn at concurrency 64 on two CPUs) the
wall clock can differ from the CPU ratio by where the scheduler puts the
parent, and this table shows when it did.

``--realtime`` takes that out: the measuring thread runs at real-time priority
(``SCHED_RR``, with ``SCHED_RESET_ON_FORK`` so that its children start as
ordinary tasks), and a real-time thread that wakes up takes a CPU from an
ordinary task at once, so the main thread never waits for one. What is left in
the wall clock is the work each loop does, the kernel's and the children's.
It needs ``CAP_SYS_NICE`` (or ``ulimit -r`` of 1 or more) and, in a cgroup
with real-time group scheduling, a real-time CPU budget; and it runs only
the floors and childproc's modes: the peers' threads and their child
interpreters would start as ordinary tasks, so they would not be measured
alike. For the same reason it means something only where pidfds exist
(without them childproc watches a child from a thread of its own). Its
recorded run is ``benchmarks/results/throughput-realtime.json`` (written only
with ``--json`` naming it).

``--baseline SRC`` compares this checkout's childproc with another's instead
(see ``benchmarks/_common.py``): every childproc row (mode, kind,
concurrency) runs A (this checkout), B (``SRC``'s) and A' (this checkout
again) in child interpreters of their own, in a random order each round, each
run once untimed first and then timed; the table gives wall time per child B/A
and A'/A, the JSON also CPU per child. The floors and the peers do not run.

Contenders: every childproc mode that reaps (and MAINLOOP, reaping by pid),
asyncio ``create_subprocess_exec`` (default child watcher), trio
``run_process``, anyio ``run_process`` (on its asyncio backend, nothing
captured), Twisted ``spawnProcess`` and Tornado ``Subprocess`` where
installed, and childproc's adapters' ``await ctx.run(argv)`` beside each. The
anyio rows run under anyio's task group and limiter, the asyncio rows under
``gather`` and a semaphore: each adapter is driven as its host's own API is.

An adapter can be no faster than its loop lets anything be, so each host has a
floor of its own: ``asyncio pidfd floor``, ``trio pidfd floor``, ``anyio
pidfd floor`` and ``Twisted pidfd floor`` (no library) spawn with
``posix_spawn``, give the child's pidfd to the loop (``add_reader``,
``wait_readable``, ``reactor.addReader``), ``waitid`` it and complete a
future, nothing else. A
last table gives each adapter's throughput over its host's own API beside
that floor's over the same: the second figure is the most any adapter on that
loop can reach. (On Python 3.12+ asyncio's own API watches with a pidfd too,
so its floor is close to it.)

Usage: python benchmarks/throughput.py [--n 400] [--rounds 7] [--realtime] [--only WORDS] [--json PATH]
       python benchmarks/throughput.py --baseline SRC [--n 400] [--rounds 7] [--json PATH]
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found, unused-ignore]
import argparse
import fcntl
import itertools
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import _common

from childproc import Child, ChildEvent, Context, Hooks, SigchldOwner

TRUE = "/bin/true"
ARGV = [TRUE]
ENV: dict[str, str] = dict(os.environ)  # one plain dict for every row (see the docstring)
MODES = [
    SigchldOwner.SELECTIVE_REAP,
    SigchldOwner.PIDFD,
    SigchldOwner.LIBXL,
    SigchldOwner.LIBXL_ALWAYS,
    SigchldOwner.MAINLOOP,
]


# -- the floor -----------------------------------------------------------------------------
def floor_spawn(n: int, conc: int) -> None:
    inflight = 0
    for _ in range(n):
        if inflight == conc:
            os.waitpid(-1, 0)
            inflight -= 1
        os.posix_spawn(TRUE, ARGV, ENV)
        inflight += 1
    for _ in range(inflight):
        os.waitpid(-1, 0)


def floor_fork(n: int, conc: int) -> None:
    inflight = 0
    for _ in range(n):
        if inflight == conc:
            os.waitpid(-1, 0)
            inflight -= 1
        if os.fork() == 0:
            os._exit(0)
        inflight += 1
    for _ in range(inflight):
        os.waitpid(-1, 0)


def pidfd_floor(kind: str) -> Callable[[int, int], None]:
    """The least a steal-free watcher does: pidfd + epoll + waitid(P_PIDFD), no library."""

    def run(n: int, conc: int) -> None:
        ep = select.epoll()
        callbacks: dict[int, tuple[int, Callable[[int, int], None]]] = {}
        pending = [0]

        def done(pid: int, status: int) -> None:
            pending[0] -= 1

        started = 0
        try:
            while started < n or pending[0]:
                while started < n and pending[0] < conc:
                    if kind == "spawn":
                        pid = os.posix_spawn(TRUE, ARGV, ENV)
                    else:
                        pid = os.fork()
                        if pid == 0:
                            os._exit(0)
                    fd = os.pidfd_open(pid)
                    ep.register(fd, select.EPOLLIN)
                    callbacks[fd] = (pid, done)
                    pending[0] += 1
                    started += 1
                for fd, _ in ep.poll(1.0):  # never unbounded: a lost wake-up shows as slowness
                    pid, callback = callbacks.pop(fd)
                    info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                    ep.unregister(fd)
                    os.close(fd)
                    assert info is not None
                    callback(pid, info.si_status)
        finally:
            ep.close()

    return run


class _Record:
    """A child as the promise floor keeps it: the least a handle can be."""

    __slots__ = ("done", "fd", "ident", "pid", "rusage", "status")

    def __init__(self) -> None:
        self.pid = 0
        self.fd = -1
        self.ident: tuple[int, int] = (0, 0)
        self.status: int | None = None
        self.rusage: Any = None
        self.done = False


def promise_floor(kind: str) -> Callable[[int, int], None]:
    """The pidfd floor plus the work childproc's promise and API require per child,
    with no structure: the system calls and records, written out in one loop, and
    nothing else.

    Per start: the fork check (``getpid``); SIGCHLD's disposition read from the
    kernel and a start refused if it discards statuses (required at every
    spawn and fork: ``sigaction`` through ctypes, as childproc must, Python
    having no call for it); for a fork, SIGINT blocked around it
    (``pthread_sigmask`` three times, through ``_signal`` as childproc calls it);
    the pid and the pidfd stored from C (so that an interrupt between two
    bytecodes cannot lose them); the pidfd kept off fds 0-2 and identified
    (``fstat``: enough on kernels with pidfs, 6.9 and later, as here; before,
    childproc also reads the pidfd's fdinfo); the process lock. Per exit: the
    fork check; a ``WNOWAIT`` peek, then ``wait4`` for the resource usage, its
    result stored from C; the exit recorded once; the record marked delivered
    before the callback, which gets what childproc's gets (a
    :class:`~childproc.ChildEvent` for spawn, ``(pid, status)`` for
    ``child_fork``); the pidfd checked (``fstat``) before it is closed, after
    the callback.

    What childproc's PIDFD mode costs beyond this row is its structure (the
    journal, the ledger and its table, the seams, the modes); what this row
    costs beyond the pidfd floor is the promise and the API. Borrowed from
    childproc: ``ChildEvent`` and the ctypes ``sigaction`` reader."""
    from childproc._sigchld import SA_NOCLDWAIT, _read_kernel  # noqa: PLC0415 - borrowed

    sigmask = _signal.pthread_sigmask  # (signal's wrapper makes an enum of every signal)
    block, setmask, sigint = int(signal.SIG_BLOCK), int(signal.SIG_SETMASK), (int(signal.SIGINT),)

    def run(n: int, conc: int) -> None:
        ep = select.epoll()
        lock = threading.RLock()
        records: dict[int, _Record] = {}  # pidfd -> record
        pidfds: dict[int, int] = {}  # pid -> pidfd, stored from C
        reaped: list[tuple[_Record, tuple[int, int, Any]]] = []  # stored from C
        me = os.getpid()
        pending = [0]

        def done(record: _Record, event: ChildEvent) -> None:
            pending[0] -= 1

        def done_pid(pid: int, status: int) -> None:
            pending[0] -= 1

        started = 0
        try:
            while started < n or pending[0]:
                while started < n and pending[0] < conc:
                    handler, flags = _read_kernel()
                    if os.getpid() != me or handler == 1 or (flags or 0) & SA_NOCLDWAIT:
                        raise RuntimeError("forked, or SIGCHLD ignored")
                    record = _Record()
                    got: list[int] = []
                    with lock:
                        if kind == "spawn":
                            got.extend(itertools.starmap(os.posix_spawn, ((TRUE, ARGV, ENV),)))
                        else:
                            mask = sigmask(block, ())
                            sigmask(block, sigint)
                            try:
                                got.extend(itertools.starmap(os.fork, ((),)))
                            finally:
                                sigmask(setmask, mask)
                            if got[0] == 0:
                                os._exit(0)
                        pid = record.pid = got[0]
                        pidfds.update(zip((pid,), map(os.pidfd_open, (pid,)), strict=True))
                        fd = pidfds[pid]
                        if fd <= 2:  # (a host may have closed one: never leave ours there)
                            pidfds[pid] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                            os.close(fd)
                            fd = pidfds[pid]
                        st = os.fstat(fd)
                        record.fd, record.ident = fd, (st.st_dev, st.st_ino)
                        ep.register(fd, select.EPOLLIN)
                        records[fd] = record
                    pending[0] += 1
                    started += 1
                for fd, _ in ep.poll(1.0):  # never unbounded: a lost wake-up shows as slowness
                    if os.getpid() != me:
                        raise RuntimeError("forked")
                    with lock:
                        record = records[fd]
                        if os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                            continue
                        reaped.extend(
                            zip((record,), map(os.wait4, (record.pid,), (os.WNOHANG,)), strict=True)
                        )
                        _, (_, status, rusage) = reaped.pop()
                        if record.status is None:  # recorded once
                            record.status, record.rusage = status, rusage
                    record.done = True
                    if kind == "spawn":
                        done(record, ChildEvent.from_wait_status(record.pid, status, None, rusage))
                    else:
                        done_pid(record.pid, status)
                    with lock:
                        st = os.fstat(fd)
                        if (st.st_dev, st.st_ino) == record.ident:
                            ep.unregister(fd)
                            os.close(fd)
                        del records[fd], pidfds[record.pid]
        finally:
            ep.close()

    return run


def sigchld_floor(kind: str) -> Callable[[int, int], None]:
    """The least a correct SIGCHLD-driven reaper does (LIBXL's mechanism, no
    library): ``SIGCHLD`` caught with the wake-up fd on a pipe, a ``select`` on
    it, and ``waitpid(-1, WNOHANG)`` until nothing is left."""

    def run(n: int, conc: int) -> None:
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)

        def handler(signum: int, frame: object) -> None:
            pass  # the interpreter already wrote the wake-up fd

        old = signal.getsignal(signal.SIGCHLD)
        old_fd: int | None = None
        try:
            signal.signal(signal.SIGCHLD, handler)
            old_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
            inflight = started = 0
            while started < n or inflight:
                while started < n and inflight < conc:
                    if kind == "spawn":
                        os.posix_spawn(TRUE, ARGV, ENV)
                    elif os.fork() == 0:
                        os._exit(0)
                    inflight += 1
                    started += 1
                select.select([rfd], [], [], 1.0)  # never unbounded, as above
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
                while inflight:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    inflight -= 1
        finally:
            if old_fd is not None:
                signal.set_wakeup_fd(old_fd)
            signal.signal(signal.SIGCHLD, old)
            os.close(rfd)
            os.close(wfd)

    return run


def sigchld_pidfd_floor(kind: str) -> Callable[[int, int], None]:
    """LIBXL_ALWAYS's mechanism with no library: a self-pipe written by a Python
    handler, pidfds as wake-ups beside it, ``waitpid(-1, WNOHANG)`` to reap.

    Written out in full, as each floor is (the start of a child repeats the
    pidfd floor's): a floor makes no call per child beyond its mechanism's."""

    def run(n: int, conc: int) -> None:
        ep = select.epoll()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        ep.register(rfd, select.EPOLLIN)

        def handler(signum: int, frame: object) -> None:
            try:
                os.write(wfd, b"\0")
            except BlockingIOError:
                pass

        pidfds: dict[int, int] = {}  # pid -> pidfd
        old = signal.getsignal(signal.SIGCHLD)
        try:
            signal.signal(signal.SIGCHLD, handler)
            started = 0
            while started < n or pidfds:
                while started < n and len(pidfds) < conc:
                    if kind == "spawn":
                        pid = os.posix_spawn(TRUE, ARGV, ENV)
                    else:
                        pid = os.fork()
                        if pid == 0:
                            os._exit(0)
                    fd = os.pidfd_open(pid)
                    ep.register(fd, select.EPOLLIN)
                    pidfds[pid] = fd
                    started += 1
                for fd, _ in ep.poll(1.0):  # never unbounded, as above
                    if fd == rfd:
                        try:
                            os.read(rfd, 4096)
                        except BlockingIOError:
                            pass
                while pidfds:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    fd = pidfds.pop(pid)
                    ep.unregister(fd)
                    os.close(fd)
        finally:
            signal.signal(signal.SIGCHLD, old)
            ep.close()
            os.close(rfd)
            os.close(wfd)

    return run


# -- childproc -------------------------------------------------------------------------------
def childproc_run(mode: SigchldOwner, kind: str) -> Callable[[int, int], None]:
    def run(n: int, conc: int) -> None:
        with Context() as ctx:
            ctx.setmode(Hooks(chldowner=mode))
            pending = [0]

            def done(child: Child, event: ChildEvent) -> None:
                pending[0] -= 1

            def done_pid(pid: int, status: int) -> None:
                pending[0] -= 1

            mainloop = mode is SigchldOwner.MAINLOOP
            started = 0
            while started < n or pending[0]:
                while started < n and pending[0] < conc:
                    if kind == "spawn":
                        child = ctx.spawn(ARGV, done, env=ENV)
                        pid = child.pid
                    else:
                        pid = ctx.child_fork(done_pid)
                        if pid == 0:
                            os._exit(0)
                    pending[0] += 1
                    started += 1
                if mainloop:  # the host reaps and reports
                    pid, status = os.waitpid(-1, 0)
                    ctx.childproc_reaped(pid, status)
                else:
                    ctx.wait(5)

    return run


# -- peers -------------------------------------------------------------------------------------
def asyncio_run(n: int, conc: int) -> None:
    import asyncio  # noqa: PLC0415

    async def main() -> None:
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                proc = await asyncio.create_subprocess_exec(TRUE, env=ENV)
                await proc.wait()

        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())


def trio_run(n: int, conc: int) -> None:
    import trio  # noqa: PLC0415

    async def main() -> None:
        limit = trio.CapacityLimiter(conc)

        async def one() -> None:
            async with limit:
                await trio.run_process(ARGV, env=ENV)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

    trio.run(main)


def anyio_run(n: int, conc: int) -> None:
    """anyio's own ``run_process`` on its asyncio backend, nothing captured (as the
    other rows), driven as childproc's anyio row is (a task group, a limiter)."""
    import anyio  # noqa: PLC0415

    async def main() -> None:
        limit = anyio.CapacityLimiter(conc)

        async def one() -> None:
            async with limit:
                await anyio.run_process(ARGV, stdout=None, stderr=None, env=ENV)

        async with anyio.create_task_group() as group:
            for _ in range(n):
                group.start_soon(one)

    anyio.run(main, backend="asyncio")


_TWISTED = """
import os, resource, sys, time
sys.path[:0] = {path!r}
from twisted.internet import reactor, protocol
n, conc, state, env = {n}, {conc}, {{"started": 0, "done": 0}}, dict(os.environ)
def ended(_=None):
    state["done"] += 1
    if state["done"] == n: reactor.stop()
    else: more()
class P(protocol.ProcessProtocol):
    def processEnded(self, reason): ended()
{start}
def more():
    while state["started"] < n and state["started"] - state["done"] < conc:
        state["started"] += 1
        start_one()
def cpu():
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
c0, t0 = cpu(), time.perf_counter()
reactor.callWhenRunning(more)
reactor.run()
print(time.perf_counter() - t0, cpu() - c0)
"""


def asyncio_pidfd_floor(n: int, conc: int) -> None:
    """The least any asyncio adapter can do: ``posix_spawn``, a pidfd in
    ``loop.add_reader``, ``waitid`` and a future per child; no library, no checks."""
    import asyncio  # noqa: PLC0415

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                await _common.pidfd_on_loop(loop, ARGV, ENV)

        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())


def anyio_pidfd_floor(n: int, conc: int) -> None:
    """The least an adapter under anyio's asyncio backend can do, driven as the
    anyio rows are: ``posix_spawn``, a pidfd in the loop's ``add_reader``, ``waitid``
    and a future per child; no library, no checks."""
    import asyncio  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    async def main() -> None:
        loop = asyncio.get_running_loop()
        limit = anyio.CapacityLimiter(conc)

        async def one() -> None:
            async with limit:
                await _common.pidfd_on_loop(loop, ARGV, ENV)

        async with anyio.create_task_group() as group:
            for _ in range(n):
                group.start_soon(one)

    anyio.run(main, backend="asyncio")


def trio_pidfd_floor(n: int, conc: int) -> None:
    """The least any trio adapter can do: ``posix_spawn``, ``wait_readable`` on a
    pidfd, ``waitid``; no library, no checks."""
    import trio  # noqa: PLC0415

    async def main() -> None:
        limit = trio.CapacityLimiter(conc)

        async def one() -> None:
            async with limit:
                fd = os.pidfd_open(os.posix_spawn(TRUE, ARGV, ENV))
                try:
                    await trio.lowlevel.wait_readable(fd)
                    os.waitid(os.P_PIDFD, fd, os.WEXITED)
                finally:
                    os.close(fd)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

    trio.run(main)


def _twisted_in_child(n: int, conc: int, start: str) -> None:
    """Run ``n`` children ``conc`` at a time under a Twisted reactor in a child
    interpreter (a reactor runs once per process), ``start`` defining
    ``start_one()``; the child times itself (kept in ``_timings``)."""
    import subprocess  # noqa: PLC0415

    code = _TWISTED.format(path=sys.path, n=n, conc=conc, start=start)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    _timings["twisted"] = (float(wall), float(cpu))


def twisted_run(n: int, conc: int) -> None:
    """Twisted's own ``spawnProcess``."""
    start = f'def start_one():\n    reactor.spawnProcess(P(), "{TRUE}", ["{TRUE}"], env=env)'
    _twisted_in_child(n, conc, start)


def twisted_pidfd_floor(n: int, conc: int) -> None:
    """The least any Twisted adapter can do: ``posix_spawn``, a pidfd given to
    ``reactor.addReader``, ``waitid``; no library, no checks."""
    start = f"""
class Exited:
    def __init__(self, fd): self.fd = fd
    def fileno(self): return self.fd
    def logPrefix(self): return "floor"
    def connectionLost(self, reason): pass
    def doRead(self):
        reactor.removeReader(self)
        os.waitid(os.P_PIDFD, self.fd, os.WEXITED)
        os.close(self.fd)
        ended()
def start_one():
    reactor.addReader(Exited(os.pidfd_open(os.posix_spawn("{TRUE}", ["{TRUE}"], env))))"""
    _twisted_in_child(n, conc, start)


def childproc_asyncio_run(n: int, conc: int) -> None:
    """``await ctx.run(argv)`` through childproc's asyncio adapter (beside the asyncio row)."""
    import asyncio  # noqa: PLC0415

    from childproc import asyncio_host  # noqa: PLC0415

    async def main() -> None:
        async with asyncio_host.open_context() as ctx:
            sem = asyncio.Semaphore(conc)

            async def one() -> None:
                async with sem:
                    await ctx.run(ARGV, env=ENV)

            await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())


def childproc_structured_run(lib: str) -> Callable[[int, int], None]:
    """``await ctx.run(argv)`` through childproc's trio adapter (beside the trio row),
    or its anyio adapter on anyio's asyncio backend (``lib``: "trio" or "anyio")."""

    def run(n: int, conc: int) -> None:
        import importlib  # noqa: PLC0415

        aio = importlib.import_module(lib)
        host = importlib.import_module(f"childproc.{lib}_host")
        task_group = aio.open_nursery if lib == "trio" else aio.create_task_group

        async def main() -> None:
            async with host.open_context() as ctx:
                limit = aio.CapacityLimiter(conc)

                async def one() -> None:
                    async with limit:
                        await ctx.run(ARGV, env=ENV)

                async with task_group() as group:
                    for _ in range(n):
                        group.start_soon(one)

        aio.run(main)

    return run


def childproc_twisted_run(n: int, conc: int) -> None:
    """``ctx.run(argv)`` through childproc's Twisted adapter."""
    start = (
        "from childproc import twisted_host\n"
        "ctx = twisted_host.TwistedContext(reactor)\n"
        f'def start_one():\n    ctx.run(["{TRUE}"], env=env).addBoth(ended)'
    )
    _twisted_in_child(n, conc, start)


def tornado_run(n: int, conc: int) -> None:
    import asyncio  # noqa: PLC0415

    from tornado.process import Subprocess  # noqa: PLC0415

    async def main() -> None:
        Subprocess.initialize()
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                await Subprocess([TRUE], env=ENV).wait_for_exit(raise_error=False)

        try:
            await asyncio.gather(*(one() for _ in range(n)))
        finally:
            Subprocess.uninitialize()

    asyncio.run(main())


_timings: dict[str, tuple[float, float]] = {}  # contenders that time themselves elsewhere


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


AA = "raw floor (A/A)"
PIDFD_FLOOR = "pidfd floor (no library)"
PROMISE_FLOOR = "promise floor (no structure)"
SIGCHLD_FLOOR = "SIGCHLD floor (no library)"
SIGCHLD_PIDFD_FLOOR = "SIGCHLD+pidfd floor (no library)"
LOOP_FLOORS = {loop: f"{loop} pidfd floor (no library)" for loop in ("asyncio", "trio", "Twisted", "anyio")}
# Each adapter's row, its host's own API, and the host's no-library floor.
HOSTS = [
    ("childproc asyncio_host run", "asyncio create_subprocess_exec", LOOP_FLOORS["asyncio"]),
    ("childproc anyio_host run (asyncio)", "anyio run_process (asyncio)", LOOP_FLOORS["anyio"]),
    ("childproc trio_host run", "trio run_process", LOOP_FLOORS["trio"]),
    ("childproc twisted_host run", "Twisted spawnProcess", LOOP_FLOORS["Twisted"]),
]


FLOORS: dict[str, Callable[[int, int], None]] = {"spawn": floor_spawn, "fork": floor_fork}


def contenders(kind: str, peers: bool = True) -> dict[str, Callable[[int, int], None]]:
    """What runs for ``kind`` ("spawn" or "fork"): the floors, childproc's modes, and
    (for spawn, with ``peers``) the other libraries that are installed."""
    table: dict[str, Callable[[int, int], None]] = {AA: FLOORS[kind]}
    pidfds = _common.pidfds_work()
    python_level = signal.getsignal(signal.SIGCHLD) is not None  # the SIGCHLD floors can put it back
    if pidfds:
        table[PIDFD_FLOOR] = pidfd_floor(kind)
        table[PROMISE_FLOOR] = promise_floor(kind)
    if python_level:
        table[SIGCHLD_FLOOR] = sigchld_floor(kind)
    if pidfds and python_level:
        table[SIGCHLD_PIDFD_FLOOR] = sigchld_pidfd_floor(kind)
    for mode in MODES:
        table[f"childproc {mode.name}"] = childproc_run(mode, kind)
    if kind == "spawn" and peers:
        table["asyncio create_subprocess_exec"] = asyncio_run
        table["childproc asyncio_host run"] = childproc_asyncio_run
        if pidfds:
            table[LOOP_FLOORS["asyncio"]] = asyncio_pidfd_floor
        if _available("trio"):
            table["trio run_process"] = trio_run
            table["childproc trio_host run"] = childproc_structured_run("trio")
            if pidfds:
                table[LOOP_FLOORS["trio"]] = trio_pidfd_floor
        if _available("anyio"):
            table["anyio run_process (asyncio)"] = anyio_run
            table["childproc anyio_host run (asyncio)"] = childproc_structured_run("anyio")
            if pidfds:
                table[LOOP_FLOORS["anyio"]] = anyio_pidfd_floor
        if _available("twisted"):
            table["Twisted spawnProcess"] = twisted_run
            table["childproc twisted_host run"] = childproc_twisted_run
            if pidfds:
                table[LOOP_FLOORS["Twisted"]] = twisted_pidfd_floor
        if _available("tornado"):
            table["Tornado Subprocess"] = tornado_run
    return table


def _cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _main_thread() -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of the main thread, from
    ``/proc/self/schedstat`` (Linux; None elsewhere)."""
    try:
        with open("/proc/self/schedstat", "rb") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu), int(waiting)


class Timing(NamedTuple):
    """One run: seconds, and per child where the figure exists (None where not)."""

    wall: float
    cpu: float  # this process and its reaped children, seconds
    faults: float | None  # this process's minor page faults per child
    on_cpu_us: float | None  # the main thread on a CPU, µs per child
    waiting_us: float | None  # the main thread runnable but waiting for a CPU, µs per child


def timed(fn: Callable[[int, int], None], n: int, conc: int, name: str) -> Timing:
    """Time one run of ``fn(n, conc)``."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    s0 = _main_thread()
    c0, t0 = _cpu(), time.perf_counter()
    fn(n, conc)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
    s1 = _main_thread()
    faults: float | None = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n
    on_cpu = waiting = None
    if s0 is not None and s1 is not None:
        on_cpu, waiting = (s1[0] - s0[0]) / n / 1e3, (s1[1] - s0[1]) / n / 1e3
    if "twisted" in _timings:  # ran in a child interpreter, which timed itself
        elapsed, cpu = _timings.pop("twisted")
        faults = on_cpu = waiting = None
    return Timing(elapsed, cpu, faults, on_cpu, waiting)


def _with_quartiles(values: list[float]) -> str:
    q1, q3 = _common.percentile(values, 25), _common.percentile(values, 75)
    return f"{_common.median(values):.3f} [{q1:.3f}-{q3:.3f}]"


def _table(
    title: str,
    keys: list[str],
    rows: dict[str, dict[str, list[float]]],
    cell: Callable[[str, str], str],
    first: str = "",
) -> None:
    """Print one row per contender in ``rows``; ``cell(name, key)`` is the text of a
    cell that has values ("-" where it has none)."""
    print(f"\n{title}")
    header = f"{'contender':<34}" + "".join(f"{k:>22}" for k in keys)
    print(header)
    print("-" * len(header))
    if first:
        print(first)
    for name, per in rows.items():
        print(f"{name:<34}" + "".join(f"{cell(name, k) if per.get(k) else '-':>22}" for k in keys))


def measure(payload: Mapping[str, Any]) -> dict[str, float]:
    """One childproc row in this interpreter, for ``--baseline`` (run in a child
    interpreter by ``_common.measure_in``): once untimed, then ``n`` children timed.
    Returns wall and CPU seconds per child."""
    run = childproc_run(SigchldOwner[payload["mode"]], payload["kind"])
    n, conc = int(payload["n"]), int(payload["conc"])
    run(min(n, 20), conc)  # untimed: first-run costs (lazy imports, caches) fall here
    t = timed(run, n, conc, "childproc")
    return {"wall": t.wall / n, "cpu": t.cpu / n}


def _run_ab(args: argparse.Namespace) -> int:
    concs = [int(c) for c in args.conc.split(",")]
    plan = [
        (
            f"childproc {mode.name}",
            f"{kind} c={conc}",
            {"mode": mode.name, "kind": kind, "conc": conc, "n": args.n},
        )
        for kind in args.kinds.split(",")
        for conc in concs
        for mode in MODES
    ]
    figures = ["wall", "cpu"]
    runs = _common.ab_main(args.baseline, "throughput", plan, args.rounds, figures)
    runs.table("wall", "time per child")
    _common.write(
        args.json,
        "throughput-ab",
        {"n": args.n, "rounds": args.rounds, "unit": "seconds per child", **runs.json(figures)},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "throughput", baseline=True)
    parser.add_argument("--n", type=int, default=400, help="children per run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--conc", default="1,64")
    parser.add_argument("--kinds", default="spawn,fork")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: run only the rows whose name contains one "
        "(e.g. 'asyncio,trio,Twisted' for the adapters, their hosts and the loops' floors)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run the measuring thread SCHED_RR (its children start as ordinary tasks), "
        "so that it never waits for a CPU; the floors and childproc's modes only",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        if args.realtime:
            parser.error("--baseline and --realtime: one or the other")
        return _run_ab(args)
    if not args.realtime:
        return _run(args)
    try:
        restore = realtime_thread()
    except OSError as e:
        parser.error(
            f"--realtime: this thread may not run SCHED_RR ({e.strerror}); it needs CAP_SYS_NICE "
            "or a real-time priority limit (ulimit -r) of 1 or more, and, in a cgroup with "
            "real-time group scheduling, a real-time CPU budget (cpu.rt_runtime_us)"
        )
    try:
        return _run(args)
    finally:
        restore()


def realtime_thread() -> Callable[[], None]:
    """Make the calling thread ``SCHED_RR`` (priority 1), the tasks it makes
    (children, threads) starting as ordinary ones; return the function that puts
    its policy back. Raises ``OSError`` (EPERM) where the thread may not."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))

    def restore() -> None:
        try:
            os.sched_setscheduler(0, policy, param)
        except PermissionError:  # without CAP_SYS_NICE, SCHED_RESET_ON_FORK may be set, not cleared
            os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, param)

    return restore


def _main_thread_policy() -> str:
    """The calling thread's scheduling policy as the kernel reports it ("SCHED_OTHER", ...)."""
    policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    names = ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
    return next((n for n in names if getattr(os, n, None) == policy), f"policy {policy}")


def _versus_host(ratios: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """For each adapter in ``HOSTS`` that ran: its throughput over its host API's, and
    the host's loop floor's over the same (per round, then the median)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for adapter, host, floor in HOSTS:
        if adapter not in ratios or host not in ratios or floor not in ratios:
            continue
        for key, host_ratios in ratios[host].items():
            quotients = {
                who: _common.median([a / h for a, h in zip(ratios[who][key], host_ratios, strict=True)])
                for who in (adapter, floor)
            }
            out.setdefault(adapter, {})[key] = {"adapter": quotients[adapter], "floor": quotients[floor]}
    return out


def _run(args: argparse.Namespace) -> int:
    concs = [int(c) for c in args.conc.split(",")]
    ratios: dict[str, dict[str, list[float]]] = {}
    cpu_ratios: dict[str, dict[str, list[float]]] = {}
    rates: dict[str, dict[str, list[float]]] = {}
    faults: dict[str, dict[str, list[float]]] = {}
    on_cpu: dict[str, dict[str, list[float]]] = {}
    waiting: dict[str, dict[str, list[float]]] = {}
    plan = [(kind, conc) for kind in args.kinds.split(",") for conc in concs]
    peers = not args.realtime
    policy = _main_thread_policy()  # what the scheduler says, not what was asked
    words = [w for w in args.only.split(",") if w]

    def chosen(kind: str) -> dict[str, Callable[[int, int], None]]:
        table = contenders(kind, peers)
        return {k: f for k, f in table.items() if not words or any(w.lower() in k.lower() for w in words)}

    total = sum(len(chosen(kind)) for kind, _ in plan) * args.rounds
    done = 0
    for kind, conc in plan:
        key = f"{kind} c={conc}"
        for _ in range(args.rounds):
            for name, fn in chosen(kind).items():
                # A/B/B/A: the floor right before and right after, so drift cancels.
                f1 = timed(FLOORS[kind], args.n, conc, "floor")
                c1 = timed(fn, args.n, conc, name)
                c2 = timed(fn, args.n, conc, name)
                f2 = timed(FLOORS[kind], args.n, conc, "floor")
                ratio = (f1.wall + f2.wall) / (c1.wall + c2.wall)
                cpu_ratio = (f1.cpu + f2.cpu) / (c1.cpu + c2.cpu)
                ratios.setdefault(name, {}).setdefault(key, []).append(ratio)
                cpu_ratios.setdefault(name, {}).setdefault(key, []).append(cpu_ratio)
                rates.setdefault("raw floor", {}).setdefault(key, []).append(2 * args.n / (f1.wall + f2.wall))
                rates.setdefault(name, {}).setdefault(key, []).append(2 * args.n / (c1.wall + c2.wall))
                for who, pair in (("raw floor", (f1, f2)), (name, (c1, c2))):
                    for table, field in ((faults, "faults"), (on_cpu, "on_cpu_us"), (waiting, "waiting_us")):
                        values = [x for x in (getattr(t, field) for t in pair) if x is not None]
                        if values:  # (none for a contender timed in another process: no row, no NaN)
                            table.setdefault(who, {}).setdefault(key, []).extend(values)
                done += 1
                _common.progress(done, total, f"{key} {name}")
    keys = [f"{kind} c={conc}" for kind, conc in plan]
    floor_row = f"{'raw floor (children/s)':<34}" + "".join(
        f"{_common.median(rates['raw floor'][k]):>20.0f}/s" for k in keys
    )
    title = "Throughput relative to the raw floor in the same round (1.000 = no overhead; median [quartiles])"
    _table(
        title + ("" if policy == "SCHED_OTHER" else f"; main thread {policy}"),
        keys,
        ratios,
        lambda name, k: _with_quartiles(ratios[name][k]),
        floor_row,
    )
    _table(
        "CPU per child (this process + children), the floor's relative to the contender's (same rounds)",
        keys,
        cpu_ratios,
        lambda name, k: _with_quartiles(cpu_ratios[name][k]),
    )
    _table(
        "Page faults per child in this process (minor; median)",
        keys,
        faults,
        lambda name, k: f"{_common.median(faults[name][k]):.0f}",
    )
    _table(
        "The main thread per child, µs (median): on a CPU / runnable but waiting for one",
        keys,
        on_cpu,
        lambda name, k: f"{_common.median(on_cpu[name][k]):.0f} / {_common.median(waiting[name][k]):.0f}",
    )

    versus_host = _versus_host(ratios)
    if versus_host:
        print("\nEach adapter's throughput over its host's own API, and its host's no-library floor's")
        print("(the most an adapter on that loop can reach); median of the rounds' quotients")
        header = f"{'adapter':<36}" + "".join(f"{k + ' adapter':>20}{k + ' floor':>18}" for k in keys)
        print(header)
        print("-" * len(header))
        for name, per in versus_host.items():
            cells = "".join(
                f"{per[k]['adapter']:>20.2f}{per[k]['floor']:>18.2f}" if k in per else f"{'-':>20}{'-':>18}"
                for k in keys
            )
            print(f"{name:<36}{cells}")

    def quartiles(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        return {
            n: {k: [_common.percentile(v, 25), _common.percentile(v, 75)] for k, v in per.items()}
            for n, per in table.items()
        }

    _common.write(
        args.json,
        "throughput",
        {
            "n": args.n,
            "rounds": args.rounds,
            "order": "floor, contender, contender, floor in each round",
            "main_thread": policy,
            "keys": keys,
            "ratio_to_floor": _common.medians(ratios),
            "ratio_quartiles": quartiles(ratios),
            "cpu_ratio_to_floor": _common.medians(cpu_ratios),
            "children_per_second": _common.medians(rates),
            "parent_minor_faults_per_child": _common.medians(faults),
            "main_thread_on_cpu_us_per_child": _common.medians(on_cpu),
            "main_thread_waiting_for_cpu_us_per_child": _common.medians(waiting),
            "adapter_and_loop_floor_over_host_api": versus_host,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
