"""Phases: where the wall time of one child goes, with and without childproc.

The throughput benchmark says how much slower than a bare loop childproc is;
this one says where. Children are started and waited for one at a time (``--n``
per row, ``/bin/true``), and each child's time is cut into six phases with
``time.perf_counter_ns`` stamps, reported as medians in µs:

========  ==========================================================================
pre       from the call that starts the child to ``os.posix_spawn`` (checks, the
          child's record)
spawn     ``os.posix_spawn`` itself (the parent is stopped until the child execs)
post      from its return until the loop goes to sleep (registration: the pidfd,
          the epoll, the tables)
sleep     asleep in ``poll`` on the context's fd (the child runs and exits)
deliver   from waking up to the exit's callback (reap, bookkeeping, the event)
after     from the callback until control is back with the caller (closing fds)
========  ==========================================================================

Every row sleeps the same way, in a ``select.poll`` on one fd (childproc's
:meth:`~childproc.Context.fileno`, then :meth:`~childproc.Context.dispatch`), so
the phases compare like with like. The ``floor`` row does the least a steal-free
watcher does with no library: ``pidfd_open``, an epoll, ``waitid`` on the
pidfd, a dict of callbacks. ``os.posix_spawn`` is wrapped (in this process only)
to stamp its call and return; nothing of childproc's is.

On a machine with few CPUs the child and the parent often share one, so
``post`` is not hidden behind the child's ``exec``: the parent's whole CPU per
child is then on the path, and ``sleep`` is the same in every row.

Usage: python benchmarks/phases.py [--n 1000] [--modes SELECTIVE_REAP,PIDFD] [--json PATH]
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

import _common

import childproc

PHASES = ["pre", "spawn", "post", "sleep", "deliver", "after"]
ENV: dict[str, str] = dict(os.environ)
_now = time.perf_counter_ns


class _Stamps:
    """``os.posix_spawn`` wrapped to stamp its call and its return."""

    def __init__(self) -> None:
        self.call = self.ret = 0
        self._real = os.posix_spawn

    def __enter__(self) -> _Stamps:
        real = self._real

        def posix_spawn(*args: Any, **kwargs: Any) -> int:
            self.call = _now()
            try:
                return real(*args, **kwargs)
            finally:
                self.ret = _now()

        os.posix_spawn = posix_spawn
        return self

    def __exit__(self, *exc: object) -> None:
        os.posix_spawn = self._real


def _floor(n: int, stamps: _Stamps, record: Callable[[list[int]], None]) -> None:
    ep = select.epoll()
    poller = select.poll()
    poller.register(ep.fileno(), select.POLLIN)
    callbacks: dict[int, Callable[[int], None]] = {}
    mark = [0]

    def done(status: int) -> None:
        mark[0] = _now()

    try:
        for _ in range(n):
            t0 = _now()
            fd = os.pidfd_open(os.posix_spawn("/bin/true", ["/bin/true"], ENV))
            ep.register(fd, select.EPOLLIN)
            callbacks[fd] = done
            t_sleep = _now()
            poller.poll()
            t_wake = _now()
            for ready, _ in ep.poll(0):
                info = os.waitid(os.P_PIDFD, ready, os.WEXITED | os.WNOHANG)
                ep.unregister(ready)
                os.close(ready)
                callbacks.pop(ready)(info.si_status if info is not None else -1)
            t_end = _now()
            record([stamps.call - t0, stamps.ret - stamps.call, t_sleep - stamps.ret,
                    t_wake - t_sleep, mark[0] - t_wake, t_end - mark[0]])  # fmt: skip
    finally:
        ep.close()


def _childproc(mode: str, n: int, stamps: _Stamps, record: Callable[[list[int]], None]) -> None:
    mark = [0]

    def done(child: childproc.Child, event: childproc.ChildEvent) -> None:
        mark[0] = _now()

    with childproc.Context(childproc.SigchldOwner[mode]) as ctx:
        poller = select.poll()
        poller.register(ctx.fileno(), select.POLLIN)
        for _ in range(n):
            mark[0] = 0
            t0 = _now()
            ctx.spawn(["/bin/true"], done, env=ENV)
            t_sleep = _now()
            while not mark[0]:
                poller.poll()
                t_wake = _now()
                ctx.dispatch()
            t_end = _now()
            record([stamps.call - t0, stamps.ret - stamps.call, t_sleep - stamps.ret,
                    t_wake - t_sleep, mark[0] - t_wake, t_end - mark[0]])  # fmt: skip


def measure(row: str, n: int) -> dict[str, float]:
    """Median µs per phase (and their sum) for ``row`` ("floor" or a mode's name)."""
    samples: list[list[int]] = []
    with _Stamps() as stamps:
        for count, keep in ((max(5, n // 10), False), (n, True)):  # (a warm-up first)
            record = samples.append if keep else (lambda _: None)
            if row == "floor":
                _floor(count, stamps, record)
            else:
                _childproc(row, count, stamps, record)
    out = {p: _common.median([s[i] / 1000 for s in samples]) for i, p in enumerate(PHASES)}
    out["total"] = sum(out[p] for p in PHASES)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "phases")
    parser.add_argument("--n", type=int, default=1000, help="children per row")
    parser.add_argument("--modes", default="SELECTIVE_REAP,PIDFD")
    args = parser.parse_args(argv)
    if not _common.pidfds_work():
        parser.error("the floor and the rows compared need pidfds (Linux >= 5.3)")
    rows = ["floor", *[m for m in args.modes.split(",") if m]]
    if "MAINLOOP" in rows:
        parser.error("MAINLOOP: the application reaps, and this loop only polls and dispatches")
    results = {}
    for i, row in enumerate(rows):
        _common.progress(i, len(rows), row)
        results[row] = measure(row, args.n)
    print(f"\nOne child at a time, median µs per phase ({args.n} children per row)")
    print(f"{'row':16}" + "".join(f"{p:>9}" for p in [*PHASES, "total"]))
    for row, phases in results.items():
        print(f"{row:16}" + "".join(f"{phases[p]:9.1f}" for p in [*PHASES, "total"]))
    _common.write(args.json, "phases", {"n": args.n, "phases_us": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
