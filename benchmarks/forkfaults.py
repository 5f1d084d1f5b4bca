"""Fork faults: the pages one fork through a fork server makes the server and the child write.

After ``fork()`` the server and its new child share every page, write-protected:
the first write to a page by either of them is a page fault, and a copy of the
page while the other still shares it (a few microseconds each on a small VM).
In Python every reference count is a write, so these faults, not the
``fork()`` call, are most of what a fork through a server costs, and they are
what to look at when that cost moves. The kernel counts them:
``/proc/<server>/stat`` has the server's minor faults and those of its reaped
children.

Each round runs a batch of children (the entry returns at once; the caller
waits on the exit fd) through each server in turn, interleaved, after a
warm-up. Reported: faults per child in the server and in the child (mean over
the batches), milliseconds per child (median of the batches), and that time
relative to the reference in the same rounds:

* ``fresh server``  - ``ForkServer.start_fresh``
* ``copying server`` - ``ForkServer.start``: a copy of this process, with its
  modules and their at-fork hooks
* ``minimal fork server (reference)`` - the ``bigparent`` benchmark's bare
  interpreter that forks on one byte, waits, and writes the status back

Usage: python benchmarks/forkfaults.py [--rounds 10] [--batch 100]
       [--json PATH]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import _common
from _entries import quick_exit
from bigparent import MinimalForkServer

from childproc.forkserver import ForkServer


def _faults(pid: int) -> tuple[int, int]:
    """(minor faults of ``pid``, minor faults of its reaped children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "forkfaults")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="children per server per round")
    args = parser.parse_args(argv)

    fresh = ForkServer.start_fresh(entries={"quick_exit": quick_exit})
    copying = ForkServer.start(entries={"quick_exit": quick_exit})
    minimal = MinimalForkServer()

    def served(server: ForkServer) -> Callable[[], None]:
        def run() -> None:
            child = server.fork("quick_exit")
            child.wait()
            child.close()

        return run

    servers: dict[str, tuple[int, Callable[[], object]]] = {
        "fresh server": (fresh.pid, served(fresh)),
        "copying server": (copying.pid, served(copying)),
        "minimal fork server (reference)": (minimal.proc.pid, minimal.fork_and_wait),
    }
    server_faults: dict[str, list[float]] = {name: [] for name in servers}
    child_faults: dict[str, list[float]] = {name: [] for name in servers}
    times: dict[str, list[float]] = {name: [] for name in servers}
    ratios: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _pid, fn in servers.values():
            for _ in range(50):  # warm-up: caches, lazily made objects
                fn()
        for r in range(args.rounds):
            this_round: dict[str, float] = {}
            for name, (pid, fn) in servers.items():
                before = _faults(pid)
                t0 = time.perf_counter()
                for _ in range(args.batch):
                    fn()
                per_child = (time.perf_counter() - t0) / args.batch
                after = _faults(pid)
                server_faults[name].append((after[0] - before[0]) / args.batch)
                child_faults[name].append((after[1] - before[1]) / args.batch)
                times[name].append(per_child)
                this_round[name] = per_child
            for name, per_child in this_round.items():
                ratios[name].append(per_child / this_round["minimal fork server (reference)"])
            _common.progress(r + 1, args.rounds, f"round {r + 1}")
    finally:
        fresh.stop()
        copying.stop()
        minimal.close()

    header = f"{'server':<34}{'server faults':>15}{'child faults':>14}{'ms/child':>10}{'x reference':>13}"
    print("\nPage faults per child (mean), time per child (median), time relative to the reference")
    print(header)
    print("-" * len(header))
    summary: dict[str, dict[str, float]] = {}
    for name in servers:
        summary[name] = {
            "server_faults_per_child": statistics.mean(server_faults[name]),
            "child_faults_per_child": statistics.mean(child_faults[name]),
            "seconds_per_child": statistics.median(times[name]),
            "ratio_to_reference": statistics.median(ratios[name]),
        }
        s = summary[name]
        print(
            f"{name:<34}{s['server_faults_per_child']:>15.1f}{s['child_faults_per_child']:>14.1f}"
            f"{s['seconds_per_child'] * 1e3:>10.3f}{s['ratio_to_reference']:>12.2f}x"
        )
    _common.write(
        args.json,
        "forkfaults",
        {"rounds": args.rounds, "batch": args.batch, "servers": summary},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
