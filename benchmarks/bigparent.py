"""Big parents: what one child costs when the parent holds a lot of touched memory.

The fork server is started first, while this process is small (that is the
point of a fork server); then the process grows to each size in turn (every
page written, so it is really resident) and shrinks back through them (half
the rounds on the way up, half on the way down, so that a drift in the
machine's speed does not look like a cost that grows with the parent), and at
each size the strategies run interleaved: in each round, every strategy makes
a batch of children in a row.
Medians over all the children are reported. Batches, each after one untimed
child, because each ``os.fork`` leaves the parent's whole memory
write-protected: the parent then takes a page fault on the first write to each
page, and a strategy timed right after an ``os.fork`` would be charged for
those faults (the fork server's client, some 140 of them: the untimed child
takes them all):

* ``os.fork``          - fork + _exit + waitpid: copies the page tables
* ``ctx.spawn``        - childproc's posix_spawn (CLONE_VM|CLONE_VFORK), /bin/true
* ``forkserver fork``  - the server forks a Python entry that returns at once
* ``forkserver spawn`` - the server posix_spawns /bin/true
* ``fresh forkserver fork`` - the same entry through ``ForkServer.start_fresh``:
  a server that is a fresh interpreter, so its children carry no at-fork hooks
  of modules this process imported
* ``fresh forkserver spawn`` - /bin/true through that fresh server's exec path
* ``minimal fork server (reference)`` - not childproc: the least a fork server
  written in Python can cost here. A bare interpreter (``python -I -S``, no
  imports, no at-fork hooks) that forks on one byte, ``waitpid``\\ s, and
  writes the status back. No requests, no entries, no exit fds, no error
  handling. Its time is the floor of any Python fork server on this machine.

Usage: python benchmarks/bigparent.py [--sizes-mib 12,100,1024,4096] [--reps 10] [--batch 6]
       [--json PATH]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import _common
from _entries import quick_exit

from childproc import Context, Hooks, SigchldOwner
from childproc.forkserver import ForkServer, ServedChild

_MINIMAL_SERVER = """
import os, sys
fd = int(sys.argv[1])
while os.read(fd, 1):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.write(fd, os.waitpid(pid, 0)[1].to_bytes(4, "little"))
"""


class MinimalForkServer:
    """The reference: a bare interpreter that forks on request (see the module docstring)."""

    def __init__(self) -> None:
        import socket  # noqa: PLC0415

        self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _MINIMAL_SERVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()

    def fork_and_wait(self) -> int:
        self.sock.send(b"x")
        data = b""
        while len(data) < 4:
            more = self.sock.recv(4 - len(data))
            if not more:
                raise RuntimeError("the minimal fork server died")
            data += more
        return int.from_bytes(data, "little")

    def close(self) -> None:
        self.sock.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "bigparent")
    parser.add_argument("--sizes-mib", default="12,100,1024,4096")
    parser.add_argument("--reps", type=int, default=10, help="rounds per size (half up, half down)")
    parser.add_argument("--batch", type=int, default=6, help="children per strategy per round")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mib.split(",")]

    server = ForkServer.start(entries={"quick_exit": quick_exit})  # while small
    fresh = ForkServer.start_fresh(entries={"quick_exit": quick_exit})
    minimal = MinimalForkServer()
    ctx = Context()
    ctx.setmode(Hooks(chldowner=SigchldOwner.SELECTIVE_REAP))

    def do_fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def do_spawn() -> None:
        ctx.spawn(["/bin/true"]).wait()

    def served(make: Callable[[], ServedChild]) -> Callable[[], None]:
        def run() -> None:
            child = make()
            child.wait()
            child.close()

        return run

    strategies: dict[str, Callable[[], object]] = {
        "os.fork": do_fork,
        "ctx.spawn (posix_spawn)": do_spawn,
        "forkserver fork": served(lambda: server.fork("quick_exit")),
        "forkserver spawn": served(lambda: server.spawn(["/bin/true"])),
        "fresh forkserver fork": served(lambda: fresh.fork("quick_exit")),
        "fresh forkserver spawn": served(lambda: fresh.spawn(["/bin/true"])),
        "minimal fork server (reference)": minimal.fork_and_wait,
    }
    results: dict[str, dict[int, list[float]]] = {n: {s: [] for s in sizes} for n in strategies}
    # There and back (12, 100, 1024, 4096, 4096, 1024, 100, 12 MiB), half the rounds each
    # way: the machine's speed drifts over a run, and a drift would otherwise show as a
    # cost that grows with the parent.
    order = sizes + sizes[::-1]
    visits = max(1, (args.reps + 1) // 2)
    # One block, as before (a fork's cost depends on the layout too: the same 4 GiB in
    # four blocks forked 15-25 % slower here); on the way back, a smaller copy of it (an
    # in-place shrink by less than half keeps the memory), the old one freed (unmapped).
    ballast = bytearray()
    total = len(order) * visits
    done = 0
    for size in order:
        grow = size * 1024 * 1024 - len(ballast)
        if grow > 0:
            chunk = bytearray(grow)
            chunk[::4096] = b"\x01" * len(range(0, grow, 4096))  # touch every page
            ballast += chunk
            del chunk
        elif grow < 0:
            ballast = ballast[:grow]
        for _ in range(visits):
            for name, fn in strategies.items():  # interleaved, every round
                fn()  # untimed: it takes the faults the last os.fork left (see above)
                for _ in range(args.batch):
                    t0 = time.perf_counter()
                    fn()
                    results[name][size].append(time.perf_counter() - t0)
            done += 1
            _common.progress(done, total, f"parent {size} MiB")
    ctx.close()
    server.stop()
    fresh.stop()
    minimal.close()

    med = {n: {s: statistics.median(v) for s, v in per.items()} for n, per in results.items()}
    header = f"{'strategy':<34}" + "".join(f"{str(s) + ' MiB':>12}" for s in sizes) + f"{'big/small':>11}"
    print("\nTime per child, spawn + exit + reap (ms, median)")
    print(header)
    print("-" * len(header))
    for n in strategies:
        row = "".join(f"{med[n][s] * 1e3:>12.3f}" for s in sizes)
        print(f"{n:<34}{row}{med[n][sizes[-1]] / med[n][sizes[0]]:>10.2f}x")
    big = sizes[-1]
    speedup = med["os.fork"][big] / med["forkserver fork"][big]
    speedup_exec = med["os.fork"][big] / med["forkserver spawn"][big]
    speedup_fresh = med["os.fork"][big] / med["fresh forkserver fork"][big]
    speedup_fresh_exec = med["os.fork"][big] / med["fresh forkserver spawn"][big]
    print(
        f"\nAt {big} MiB, os.fork() takes {speedup:.0f}x as long as the fork server's Python fork, "
        f"{speedup_exec:.0f}x as long as its exec path, "
        f"{speedup_fresh:.0f}x as long as a fresh server's Python fork, "
        f"{speedup_fresh_exec:.0f}x as long as a fresh server's exec path, "
        f"{med['os.fork'][big] / med['ctx.spawn (posix_spawn)'][big]:.0f}x as long as ctx.spawn"
    )
    _common.write(
        args.json,
        "bigparent",
        {
            "unit": "seconds per child (spawn + exit + reap)",
            "sizes_mib": sizes,
            "reps": 2 * visits,
            "order": "sizes up, then down again, half the rounds each way",
            "batch": args.batch,
            "peak_rss_mib": _common.peak_rss_mib(),
            "median": {n: {str(s): v for s, v in per.items()} for n, per in med.items()},
            "speedup_fork_vs_forkserver_at_largest": speedup,
            "speedup_fork_vs_forkserver_spawn_at_largest": speedup_exec,
            "speedup_fork_vs_fresh_forkserver_at_largest": speedup_fresh,
            "speedup_fork_vs_fresh_forkserver_spawn_at_largest": speedup_fresh_exec,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
