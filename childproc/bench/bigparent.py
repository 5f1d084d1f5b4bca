"""Big parents: what one child costs when the parent holds a lot of touched memory.

The fork server is started first, while this process is small (that is the
point of a fork server); then the process grows to each size in turn (every
page written, so it is really resident), and at each size the strategies run
interleaved, several rounds each, medians reported:

* ``os.fork``          - fork + _exit + waitpid: copies the page tables
* ``ctx.spawn``        - childproc's posix_spawn (CLONE_VM|CLONE_VFORK), /bin/true
* ``forkserver fork``  - the server forks a Python entry that returns at once
* ``forkserver spawn`` - the server posix_spawns /bin/true

Usage: python -m childproc bench bigparent [--sizes-mib 12,100,1024,4096] [--reps 10]
       [--json benchmarks/results/bigparent.json]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from childproc import Context, Hooks, SigchldOwner
from childproc.bench import _common
from childproc.forkserver import ForkServer


def quick_exit(server: Any, sock: Any) -> int:
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "bigparent")
    parser.add_argument("--sizes-mib", default="12,100,1024,4096")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mib.split(",")]

    server = ForkServer.start(entries={"quick_exit": quick_exit})  # while small
    ctx = Context()
    ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))

    def do_fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def do_spawn() -> None:
        ctx.spawn(["/bin/true"]).wait()

    def do_server_fork() -> None:
        child = server.fork("quick_exit")
        child.wait()
        child.close()

    def do_server_spawn() -> None:
        child = server.spawn(["/bin/true"])
        child.wait()
        child.close()

    strategies: dict[str, Callable[[], None]] = {
        "os.fork": do_fork,
        "ctx.spawn (posix_spawn)": do_spawn,
        "forkserver fork": do_server_fork,
        "forkserver spawn": do_server_spawn,
    }
    results: dict[str, dict[int, list[float]]] = {n: {s: [] for s in sizes} for n in strategies}
    ballast = bytearray()
    total = len(sizes) * args.reps
    done = 0
    for size in sizes:
        grow = size * 1024 * 1024 - len(ballast)
        if grow > 0:
            chunk = bytearray(grow)
            chunk[::4096] = b"\x01" * len(range(0, grow, 4096))  # touch every page
            ballast += chunk
            del chunk
        for _ in range(args.reps):
            for name, fn in strategies.items():  # interleaved, every round
                t0 = time.perf_counter()
                fn()
                results[name][size].append(time.perf_counter() - t0)
            done += 1
            _common.progress(done, total, f"parent {size} MiB")
    rss = _common.rss_mib()
    ctx.close()
    server.stop()

    med = {n: {s: statistics.median(v) for s, v in per.items()} for n, per in results.items()}
    header = f"{'strategy':<26}" + "".join(f"{str(s) + ' MiB':>12}" for s in sizes) + f"{'big/small':>11}"
    print("\nTime per child, spawn + exit + reap (ms, median)")
    print(header)
    print("-" * len(header))
    for n in strategies:
        row = "".join(f"{med[n][s] * 1e3:>12.3f}" for s in sizes)
        print(f"{n:<26}{row}{med[n][sizes[-1]] / med[n][sizes[0]]:>10.2f}x")
    big = sizes[-1]
    speedup = med["os.fork"][big] / med["forkserver fork"][big]
    print(
        f"\nAt {big} MiB: os.fork / forkserver fork = {speedup:.0f}x; "
        f"os.fork / ctx.spawn = {med['os.fork'][big] / med['ctx.spawn (posix_spawn)'][big]:.0f}x"
    )
    _common.write(
        args.json,
        "bigparent",
        {
            "unit": "seconds per child (spawn + exit + reap)",
            "sizes_mib": sizes,
            "reps": args.reps,
            "final_rss_mib": rss,
            "median": {n: {str(s): v for s, v in per.items()} for n, per in med.items()},
            "speedup_fork_vs_forkserver_at_largest": speedup,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
