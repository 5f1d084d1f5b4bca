"""Throughput: spawn and reap N short children, at concurrency 1 and 64.

Two kinds of child: ``/bin/true`` through the fastest exec path each contender
has (childproc: ``Context.spawn``, i.e. ``posix_spawn``), and a bare
``fork()`` whose child ``_exit``\\ s at once. Every contender runs interleaved
with the raw floor (no library: ``os.posix_spawn``/``os.fork`` and
``os.waitpid``) in each round; results are reported as throughput relative to
the floor of the same round (1.00 = as fast as no library at all), median of
the rounds.

Contenders: every childproc mode that reaps (and MAINLOOP, reaping by pid),
asyncio ``create_subprocess_exec`` (default child watcher), trio
``run_process``, Twisted ``spawnProcess`` and Tornado ``Subprocess`` where
installed.

Usage: python -m childproc bench throughput [--n 400] [--rounds 5]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from childproc import Child, ChildEvent, Context, Hooks, SigchldOwner
from childproc.bench import _common

TRUE = "/bin/true"
ARGV = [TRUE]
ENVB = os.environb


# -- the floor -----------------------------------------------------------------------------
def floor_spawn(n: int, conc: int) -> None:
    inflight = 0
    for _ in range(n):
        if inflight == conc:
            os.waitpid(-1, 0)
            inflight -= 1
        os.posix_spawn(TRUE, ARGV, ENVB)
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
                        child = ctx.spawn(ARGV, done)
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
                proc = await asyncio.create_subprocess_exec(TRUE)
                await proc.wait()

        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())


def trio_run(n: int, conc: int) -> None:
    import trio  # noqa: PLC0415

    async def main() -> None:
        limit = trio.CapacityLimiter(conc)

        async def one() -> None:
            async with limit:
                await trio.run_process(ARGV)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

    trio.run(main)


def twisted_run(n: int, conc: int) -> None:
    """Twisted in a child interpreter (its reactor runs once per process)."""
    import subprocess  # noqa: PLC0415

    code = f"""
import time
from twisted.internet import reactor, protocol
n, conc, state = {n}, {conc}, {{"started": 0, "done": 0}}
class P(protocol.ProcessProtocol):
    def processEnded(self, reason):
        state["done"] += 1
        if state["done"] == n: reactor.stop()
        else: more()
def more():
    while state["started"] < n and state["started"] - state["done"] < conc:
        state["started"] += 1
        reactor.spawnProcess(P(), "{TRUE}", ["{TRUE}"], env=None)
t0 = time.perf_counter()
reactor.callWhenRunning(more)
reactor.run()
print(time.perf_counter() - t0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    _timings["twisted"] = float(out.stdout.strip().splitlines()[-1])


def tornado_run(n: int, conc: int) -> None:
    import asyncio  # noqa: PLC0415

    from tornado.process import Subprocess  # noqa: PLC0415

    async def main() -> None:
        Subprocess.initialize()
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                await Subprocess([TRUE]).wait_for_exit(raise_error=False)

        try:
            await asyncio.gather(*(one() for _ in range(n)))
        finally:
            Subprocess.uninitialize()

    asyncio.run(main())


_timings: dict[str, float] = {}  # contenders that time themselves (in another process)


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def contenders(kind: str) -> dict[str, Callable[[int, int], None]]:
    table: dict[str, Callable[[int, int], None]] = {}
    modes = [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD, SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS]
    for mode in [*modes, SigchldOwner.MAINLOOP]:
        table[f"childproc {mode.name}"] = childproc_run(mode, kind)
    if kind == "spawn":
        table["asyncio create_subprocess_exec"] = asyncio_run
        if _available("trio"):
            table["trio run_process"] = trio_run
        if _available("twisted"):
            table["Twisted spawnProcess"] = twisted_run
        if _available("tornado"):
            table["Tornado Subprocess"] = tornado_run
    return table


def timed(fn: Callable[[int, int], None], n: int, conc: int, name: str) -> float:
    t0 = time.perf_counter()
    fn(n, conc)
    elapsed = time.perf_counter() - t0
    return _timings.pop("twisted", elapsed) if name.startswith("Twisted") else elapsed


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "throughput")
    parser.add_argument("--n", type=int, default=400, help="children per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conc", default="1,64")
    args = parser.parse_args(argv)
    concs = [int(c) for c in args.conc.split(",")]
    floors = {"spawn": floor_spawn, "fork": floor_fork}
    ratios: dict[str, dict[str, list[float]]] = {}
    rates: dict[str, dict[str, list[float]]] = {}
    plan = [(kind, conc) for kind in ("spawn", "fork") for conc in concs]
    total = sum(len(contenders(kind)) for kind, _ in plan) * args.rounds
    done = 0
    for kind, conc in plan:
        for _ in range(args.rounds):
            for name, fn in contenders(kind).items():
                floor = timed(floors[kind], args.n, conc, "floor")  # A/B: the floor right beside it
                t = timed(fn, args.n, conc, name)
                key = f"{kind} c={conc}"
                ratios.setdefault(name, {}).setdefault(key, []).append(floor / t)
                rates.setdefault("raw floor", {}).setdefault(key, []).append(args.n / floor)
                rates.setdefault(name, {}).setdefault(key, []).append(args.n / t)
                done += 1
                _common.progress(done, total, f"{key} {name}")
    keys = [f"{kind} c={conc}" for kind, conc in plan]
    print("\nThroughput relative to the raw floor in the same round (1.00 = no overhead; median)")
    header = f"{'contender':<34}" + "".join(f"{k:>14}" for k in keys)
    print(header)
    print("-" * len(header))
    floor_row = "".join(f"{_common.median(rates['raw floor'][k]):>10.0f}/s  " for k in keys)
    print(f"{'raw floor (children/s)':<34}{floor_row}")
    for name, per in ratios.items():
        row = "".join(f"{_common.median(per[k]):>14.3f}" if k in per else f"{'-':>14}" for k in keys)
        print(f"{name:<34}{row}")
    _common.write(
        args.json,
        "throughput",
        {
            "n": args.n,
            "rounds": args.rounds,
            "keys": keys,
            "ratio_to_floor": {
                n: {k: _common.median(v) for k, v in per.items()} for n, per in ratios.items()
            },
            "children_per_second": {
                n: {k: _common.median(v) for k, v in per.items()} for n, per in rates.items()
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
