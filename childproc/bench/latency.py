"""Latency: from a child's last instruction to its callback, p50 and p99.

Each child records ``time.monotonic()`` (one clock for all processes) as its
last act before ``_exit``; the callback records the time it runs. Scenarios:

* ``idle``       - the main thread waits in ``ctx.wait()``;
* ``busy``       - the main thread computes in Python; a dispatch thread runs
  callbacks (so the GIL's switch interval is in the figure);
* ``blocked-C``  - the main thread sleeps in C (``time.sleep``); a worker thread
  forked the child and waits for it: the case where a Python-level SIGCHLD
  handler alone is late, because it waits for the main thread.

Each runs interleaved with the floor, a bare ``select`` on the child's pidfd
(then ``waitid``), in the same thread arrangement.

Usage: python -m childproc bench latency [--samples 300]
"""

from __future__ import annotations

import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable

from childproc import Child, ChildEvent, Context, Hooks, SigchldOwner
from childproc.bench import _common

STAMP = struct.Struct("=d")


def _child_exit_stamped(w: int) -> None:
    os.write(w, STAMP.pack(time.monotonic()))
    os._exit(0)


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
    died: float = STAMP.unpack(os.read(r, STAMP.size))[0]
    os.close(r)
    return seen - died


def childproc_once(ctx: Context, dispatch_here: bool) -> float:
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
        while not seen:
            time.sleep(0.0001)
    died: float = STAMP.unpack(os.read(r, STAMP.size))[0]
    os.close(r)
    return seen[0] - died


def in_worker(fn: Callable[[], float], main_blocked: bool) -> float:
    """Run ``fn`` on a worker thread while the main thread sleeps in C (or not)."""
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    while t.is_alive():
        if main_blocked:
            time.sleep(0.05)  # blocked in C
        else:
            t.join(0.001)
    t.join()
    return out[0]


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "latency")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--mode", default="SELECTIVE_REAP", help="the childproc mode to measure")
    args = parser.parse_args(argv)
    mode = SigchldOwner[args.mode]
    samples: dict[str, dict[str, list[float]]] = {}

    def run(scenario: str, ours: Callable[[], float], floor: Callable[[], float]) -> None:
        for i in range(args.samples):
            samples.setdefault(scenario, {}).setdefault("floor", []).append(floor())
            samples[scenario].setdefault("childproc", []).append(ours())
            if i % 20 == 0:
                _common.progress(i, args.samples, scenario)
        _common.progress(args.samples, args.samples, scenario)

    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=mode))
        run("idle", lambda: childproc_once(ctx, True), floor_once)
        run(
            "blocked-C",
            lambda: in_worker(lambda: childproc_once(ctx, True), True),
            lambda: in_worker(floor_once, True),
        )
    with Context() as ctx:
        ctx.setmode(Hooks(chldowner=mode))
        ctx.start_dispatch_thread()
        stop = threading.Event()

        def burn() -> None:
            while not stop.is_set():
                sum(range(1000))

        burner = threading.Thread(target=burn)
        burner.start()
        try:
            run("busy", lambda: childproc_once(ctx, False), floor_once)
        finally:
            stop.set()
            burner.join()

    print(f"\nExit -> callback latency, {mode.name} (µs)")
    header = (
        f"{'scenario':<12}{'floor p50':>12}{'floor p99':>12}{'ours p50':>12}{'ours p99':>12}{'p99 ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    summary: dict[str, dict[str, float]] = {}
    for scenario, per in samples.items():
        fp50, fp99 = _common.percentile(per["floor"], 50), _common.percentile(per["floor"], 99)
        op50, op99 = _common.percentile(per["childproc"], 50), _common.percentile(per["childproc"], 99)
        summary[scenario] = {"floor_p50": fp50, "floor_p99": fp99, "p50": op50, "p99": op99}
        print(
            f"{scenario:<12}{fp50 * 1e6:>12.0f}{fp99 * 1e6:>12.0f}{op50 * 1e6:>12.0f}{op99 * 1e6:>12.0f}"
            f"{op99 / fp99:>10.2f}x"
        )
    _common.write(args.json, "latency", {"mode": mode.name, "samples": args.samples, "seconds": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
