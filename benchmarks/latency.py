"""Latency: from a child's last instruction to its callback, p50 and p99.

Each child records ``time.monotonic()`` (one clock for all processes) as its
last act before ``_exit``; the callback records the time it runs. Scenarios,
each compared with a floor in the same thread arrangement (no library: a bare
wait on the child's pidfd, then ``waitid``):

* ``idle``       - the main thread waits: in ``ctx.wait()``; the floor's in
  ``select`` on the pidfd.
* ``busy``       - the main thread computes in pure Python (a busy loop that
  ends when the callback has run), and exactly one other thread waits: for
  childproc the dispatch thread (``ctx.start_dispatch_thread()``), whose
  callback records the time; for the floor a thread in ``epoll`` on the
  pidfds, which records the time and calls ``waitid``. Nothing else runs, so
  both pay the same GIL hand-over from the computing main thread.
* ``blocked-C``  - the main thread sleeps in C (``time.sleep``); a worker thread
  forked the child and waits for it (``ctx.wait()``; the floor's ``select``):
  the case where a Python-level SIGCHLD handler alone is late, because it
  waits for the main thread.

Samples alternate floor, childproc. The table gives p50 and p99 in ms and
childproc's relative to the floor's.

``--baseline SRC`` compares this checkout's childproc with another's instead
(see ``benchmarks/_common.py``): each scenario runs A (this checkout), B
(``SRC``'s) and A' (this checkout again), ``--samples`` children each, in
child interpreters of their own, in a random order each round; the table gives
p50 and p99 B/A and A'/A. The floors do not run.

Usage: python benchmarks/latency.py [--samples 300] [--mode SELECTIVE_REAP] [--json PATH]
       python benchmarks/latency.py --baseline SRC [--samples 300] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import _common

from childproc import Child, ChildEvent, Context, Hooks, SigchldOwner

STAMP = struct.Struct("=d")
SCENARIOS = ("idle", "blocked-C", "busy")


def _child_exit_stamped(w: int) -> None:
    os.write(w, STAMP.pack(time.monotonic()))
    os._exit(0)


def _died(r: int) -> float:
    died: float = STAMP.unpack(os.read(r, STAMP.size))[0]
    os.close(r)
    return died


def _busy_until(seen: list[float]) -> None:
    """Compute in pure Python until ``seen`` has a value (the callback ran)."""
    x = 0
    while not seen:
        x += 1


# -- the floors ---------------------------------------------------------------------------
def floor_once() -> float:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child_exit_stamped(w)
    os.close(w)
    fd = os.pidfd_open(pid)
    select.select([fd], [], [])
    seen = time.monotonic()
    os.waitid(os.P_PIDFD, fd, os.WEXITED)
    os.close(fd)
    return seen - _died(r)


class FloorWaiter:
    """The busy scenario's floor: one thread in ``epoll`` on the children's pidfds,
    recording when each becomes readable, then ``waitid``."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.stop_r, self.stop_w = os.pipe()
        self.ep.register(self.stop_r, select.EPOLLIN)
        self.seen: dict[int, list[float]] = {}  # pidfd -> [time seen]
        self.thread = threading.Thread(target=self._run, name="floor-waiter")
        self.thread.start()

    def _run(self) -> None:
        while True:
            for fd, _ in self.ep.poll():
                if fd == self.stop_r:
                    return
                now = time.monotonic()
                os.waitid(os.P_PIDFD, fd, os.WEXITED)
                self.ep.unregister(fd)
                self.seen[fd].append(now)

    def once(self) -> float:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child_exit_stamped(w)
        os.close(w)
        fd = os.pidfd_open(pid)
        seen: list[float] = []
        self.seen[fd] = seen
        self.ep.register(fd, select.EPOLLIN)
        _busy_until(seen)
        del self.seen[fd]
        os.close(fd)
        return seen[0] - _died(r)

    def close(self) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join()
        self.ep.close()
        os.close(self.stop_r)
        os.close(self.stop_w)


# -- childproc ----------------------------------------------------------------------------
def childproc_once(ctx: Context, dispatch_here: bool) -> float:
    """One child: ``ctx.wait()`` here until its callback ran, or (``dispatch_here``
    false) compute in Python while the dispatch thread runs it."""
    r, w = os.pipe()
    seen: list[float] = []

    def on_event(child: Child, event: ChildEvent) -> None:
        seen.append(time.monotonic())

    child = ctx.fork(on_event)
    if child is None:
        os.close(r)
        _child_exit_stamped(w)
    os.close(w)
    if dispatch_here:
        while not seen:
            ctx.wait(5)
    else:
        _busy_until(seen)
    return seen[0] - _died(r)


def in_worker(fn: Callable[[], float]) -> float:
    """Run ``fn`` on a worker thread while the main thread sleeps in C."""
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    while t.is_alive():
        time.sleep(0.05)  # blocked in C
    t.join()
    return out[0]


@contextmanager
def context(mode: SigchldOwner, dispatch_thread: bool) -> Iterator[Context]:
    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=mode))  # always explicit: the default mode may change
        if dispatch_thread:
            ctx.start_dispatch_thread()
        yield ctx


def childproc_scenario(ctx: Context, scenario: str) -> Callable[[], float]:
    if scenario == "idle":
        return lambda: childproc_once(ctx, True)
    if scenario == "blocked-C":
        return lambda: in_worker(lambda: childproc_once(ctx, True))
    return lambda: childproc_once(ctx, False)


def measure(payload: Mapping[str, Any]) -> dict[str, float]:
    """childproc's p50 and p99 (seconds) for one scenario in this interpreter, for
    ``--baseline`` (run in a child interpreter by ``_common.measure_in``)."""
    scenario, samples = payload["scenario"], int(payload["samples"])
    with context(SigchldOwner[payload["mode"]], scenario == "busy") as ctx:
        once = childproc_scenario(ctx, scenario)
        once()  # untimed: first-run costs
        values = [once() for _ in range(samples)]
    return {"p50": _common.percentile(values, 50), "p99": _common.percentile(values, 99)}


def _run_ab(args: argparse.Namespace) -> int:
    row = f"childproc {args.mode}"
    plan = [(row, s, {"scenario": s, "samples": args.samples, "mode": args.mode}) for s in SCENARIOS]
    runs = _common.ab_main(args.baseline, "latency", plan, args.rounds, ["p50", "p99"])
    runs.table("p50", "p50 exit-to-callback latency")
    runs.table("p99", "p99 exit-to-callback latency")
    _common.write(
        args.json,
        "latency-ab",
        {"mode": args.mode, "samples": args.samples, "unit": "seconds", **runs.json(["p50", "p99"])},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "latency", baseline=True)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--mode", default="SELECTIVE_REAP", help="the childproc mode to measure")
    parser.add_argument("--rounds", type=int, default=5, help="with --baseline: A/B/A' rounds")
    args = parser.parse_args(argv)
    mode = SigchldOwner[args.mode]
    if args.baseline is not None:
        return _run_ab(args)
    samples: dict[str, dict[str, list[float]]] = {}

    def run(scenario: str, ours: Callable[[], float], floor: Callable[[], float]) -> None:
        per = samples.setdefault(scenario, {"floor": [], "childproc": []})
        floor()  # untimed, each: first-run costs
        ours()
        for i in range(args.samples):
            per["floor"].append(floor())
            per["childproc"].append(ours())
            if i % 20 == 0:
                _common.progress(i, args.samples, scenario)
        _common.progress(args.samples, args.samples, scenario)

    with context(mode, False) as ctx:
        run("idle", childproc_scenario(ctx, "idle"), floor_once)
        run("blocked-C", childproc_scenario(ctx, "blocked-C"), lambda: in_worker(floor_once))
    # busy: the floor's waiter and childproc's dispatch thread never run at the same time
    busy: dict[str, list[float]] = {"floor": [], "childproc": []}
    for i in range(args.samples + 1):  # (the first of each untimed)
        waiter = FloorWaiter()
        try:
            value = waiter.once()
        finally:
            waiter.close()
        if i:
            busy["floor"].append(value)
        with context(mode, True) as ctx:
            value = childproc_scenario(ctx, "busy")()
        if i:
            busy["childproc"].append(value)
        if i % 20 == 0:
            _common.progress(i, args.samples, "busy")
    samples["busy"] = busy

    print(f"\nExit -> callback latency, {mode.name} (ms)")
    header = (
        f"{'scenario':<12}{'floor p50':>12}{'floor p99':>12}{'ours p50':>12}{'ours p99':>12}"
        f"{'p50 ratio':>11}{'p99 ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    summary: dict[str, dict[str, float]] = {}
    for scenario, per in samples.items():
        fp50, fp99 = _common.percentile(per["floor"], 50), _common.percentile(per["floor"], 99)
        op50, op99 = _common.percentile(per["childproc"], 50), _common.percentile(per["childproc"], 99)
        summary[scenario] = {"floor_p50": fp50, "floor_p99": fp99, "p50": op50, "p99": op99}
        print(
            f"{scenario:<12}{fp50 * 1e3:>12.3f}{fp99 * 1e3:>12.3f}{op50 * 1e3:>12.3f}{op99 * 1e3:>12.3f}"
            f"{op50 / fp50:>10.2f}x{op99 / fp99:>10.2f}x"
        )
    _common.write(
        args.json,
        "latency",
        {
            "mode": mode.name,
            "samples": args.samples,
            "busy": "main thread in a pure-Python loop; one waiting thread (dispatch thread / epoll)",
            "seconds": summary,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
