"""Scaling: CPU cost per reaped child while K children stay alive.

For each K, K long-lived children (``/bin/sleep``) are started; then M of them
are killed one at a time, and the CPU time the process spends (user + system,
all threads: ``time.process_time``) from each kill until its exit has been
reaped and reported is summed. The kill itself is in every strategy's cost
alike. Strategies run interleaved (A, B, C, A, B, C, ...) in one run, each
several times, and the median is reported, because the machine is noisy.

childproc strategies: each mode/watcher. Peer strategies, written here as the
bare minimum of each technique (no library):

* ``raw pidfd+epoll``   - asyncio 3.12+'s PidfdChildWatcher idea, and the floor
* ``raw scan``          - SIGCHLD, then waitpid(pid, WNOHANG) for every child
  (Twisted, Tornado, libuv)
* ``raw waitpid(-1)``   - SIGCHLD, then waitpid(-1, WNOHANG) until empty
  (asyncio's old FastChildWatcher, gevent)

``childproc SELECTIVE_REAP (no pidfd: scan)`` is SELECTIVE_REAP where Python
has no ``os.pidfd_open`` (as on kernels before 5.3): it runs in a child
interpreter of its own that deletes ``os.pidfd_open`` before childproc looks
for it (the public way to have childproc fall back; nothing of childproc's
inside is touched).

``--baseline SRC`` compares this checkout's childproc with another's instead
(see ``benchmarks/_common.py``): every childproc strategy at every K runs A
(this checkout), B (``SRC``'s) and A' (this checkout again) in child
interpreters of their own, in a random order each round; the table gives CPU
per reaped child B/A and A'/A. The raw strategies do not run.

Usage: python benchmarks/scaling.py [--ks 10,100,1000,4000] [--kills 200]
       [--rounds 3] [--json PATH] [--baseline SRC]
Run it in a fresh venv (the machine's default interpreter's start-up hooks skew
fork/spawn costs).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import _common

import childproc
from childproc import Hooks, SigchldOwner

SLEEP = ["/bin/sleep", "3600"]
ENV: dict[str, str] = dict(os.environ)  # one plain dict for every strategy's children


def spawn_sleeper() -> int:
    return os.posix_spawn(SLEEP[0], SLEEP, ENV)


# -- childproc strategies ----------------------------------------------------------
def childproc_strategy(mode: SigchldOwner) -> Callable[[int, int], float]:
    def run(k: int, kills: int) -> float:
        with childproc.Context() as ctx:
            ctx.setmode(Hooks(chldowner=mode))
            kids = [ctx.spawn(SLEEP, env=ENV, kill_on_close=True) for _ in range(k)]
            victims = random.sample(kids, kills)
            ctx.dispatch()
            t0 = time.process_time()
            for v in victims:
                v.kill()
                while v.returncode is None:
                    ctx.wait(5)
            return (time.process_time() - t0) / kills

    return run


def without_pidfds(k: int, kills: int) -> float:
    """SELECTIVE_REAP in a Python without ``os.pidfd_open``, in a child interpreter."""
    got = _common.measure_in(_common.ROOT, "scaling", {"strategy": NO_PIDFD, "k": k, "kills": kills})
    return float(got["cpu"])


def childproc_mainloop(k: int, kills: int) -> float:
    """MAINLOOP: the host reaps its own way (here waitpid(pid)) and reports."""
    with childproc.Context() as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        kids = [ctx.spawn(SLEEP, env=ENV, kill_on_close=True) for _ in range(k)]
        victims = random.sample(kids, kills)
        t0 = time.process_time()
        for v in victims:
            v.kill()
            _, status = os.waitpid(v.pid, 0)
            ctx.childproc_reaped(v.pid, status)
        return (time.process_time() - t0) / kills


# -- raw peer strategies -------------------------------------------------------------
def _cleanup(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def raw_pidfd(k: int, kills: int) -> float:
    pids = [spawn_sleeper() for _ in range(k)]
    fds = {pid: os.pidfd_open(pid) for pid in pids}
    ep = select.epoll()
    by_fd = {}
    for pid, fd in fds.items():
        ep.register(fd, select.EPOLLIN)
        by_fd[fd] = pid
    victims = random.sample(pids, kills)
    t0 = time.process_time()
    for v in victims:
        signal.pidfd_send_signal(fds[v], signal.SIGKILL)
        done = False
        while not done:
            for fd, _ in ep.poll():
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                ep.unregister(fd)
                os.close(fd)
                done = by_fd.pop(fd) == v
    cost = (time.process_time() - t0) / kills
    ep.close()
    for pid in victims:
        fds.pop(pid)
    for fd in fds.values():
        os.close(fd)
    _cleanup([p for p in pids if p not in victims])
    return cost


def _sigchld_driven(reap: Callable[[set[int]], None]) -> Callable[[int, int], float]:
    """A bare SIGCHLD self-pipe loop that reaps with ``reap(alive)`` on each signal."""

    def run(k: int, kills: int) -> float:
        pids = [spawn_sleeper() for _ in range(k)]
        alive = set(pids)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old = signal.signal(signal.SIGCHLD, lambda s, f: os.write(w, b"\0"))
        victims = random.sample(pids, kills)
        t0 = time.process_time()
        for v in victims:
            os.kill(v, signal.SIGKILL)
            while v in alive:
                # A tick, as real SIGCHLD loops have: the signal may land on another
                # thread, leaving this select() uninterrupted until the next tick.
                select.select([r], [], [], 1.0)
                try:
                    os.read(r, 512)
                except BlockingIOError:
                    pass
                reap(alive)
        cost = (time.process_time() - t0) / kills
        signal.signal(signal.SIGCHLD, old)
        os.close(r)
        os.close(w)
        _cleanup(list(alive))
        return cost

    return run


def _reap_scan(alive: set[int]) -> None:
    """Twisted, Tornado, libuv: waitpid(pid, WNOHANG) for every child."""
    for pid in list(alive):
        if os.waitpid(pid, os.WNOHANG)[0]:
            alive.discard(pid)


def _reap_any(alive: set[int]) -> None:
    """FastChildWatcher, gevent: waitpid(-1, WNOHANG) until nothing is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        alive.discard(pid)


raw_scan = _sigchld_driven(_reap_scan)
raw_waitany = _sigchld_driven(_reap_any)


NO_PIDFD = "childproc SELECTIVE_REAP (no pidfd: scan)"
CHILDPROC: dict[str, Callable[[int, int], float]] = {
    "childproc SELECTIVE_REAP (pidfd)": childproc_strategy(SigchldOwner.SELECTIVE_REAP),
    "childproc PIDFD": childproc_strategy(SigchldOwner.PIDFD),
    NO_PIDFD: childproc_strategy(SigchldOwner.SELECTIVE_REAP),  # run by measure(), without pidfds
    "childproc LIBXL (waitpid -1)": childproc_strategy(SigchldOwner.LIBXL),
    "childproc LIBXL_ALWAYS": childproc_strategy(SigchldOwner.LIBXL_ALWAYS),
    "childproc MAINLOOP (host reaps)": childproc_mainloop,
}
STRATEGIES: dict[str, Callable[[int, int], float]] = {
    **CHILDPROC,
    NO_PIDFD: without_pidfds,
    "raw pidfd+epoll": raw_pidfd,
    "raw scan (Twisted/Tornado/libuv)": raw_scan,
    "raw waitpid(-1) (FastChildWatcher)": raw_waitany,
}


def measure(payload: Mapping[str, Any]) -> dict[str, float]:
    """One childproc strategy at one K in this interpreter (a child interpreter run by
    ``_common.measure_in``): CPU seconds per reaped child."""
    name = payload["strategy"]
    if name == NO_PIDFD and hasattr(os, "pidfd_open"):
        del os.pidfd_open  # before childproc looks: a Python without pidfds
    _raise_nofile()
    return {"cpu": CHILDPROC[name](int(payload["k"]), int(payload["kills"]))}


def _raise_nofile() -> tuple[int, int]:
    """Raise the soft fd limit to the hard one (K pidfds); return the old limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def _run_ab(args: argparse.Namespace, ks: list[int]) -> int:
    names = [n for n in CHILDPROC if not args.only or any(s in n for s in args.only.split(","))]
    plan = [
        (name, f"K={k}", {"strategy": name, "k": k, "kills": min(args.kills, k)})
        for k in ks
        for name in names
    ]
    runs = _common.ab_main(args.baseline, "scaling", plan, args.rounds, ["cpu"])
    runs.table("cpu", "CPU per reaped child")
    _common.write(
        args.json,
        "scaling-ab",
        {
            "unit": "seconds of CPU per reaped child",
            "ks": ks,
            "kills_per_run": args.kills,
            **runs.json(["cpu"]),
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "scaling", baseline=True)
    parser.add_argument("--ks", default="10,100,1000,4000")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated substrings of strategy names")
    parser.add_argument(
        "--plot", default="", help="also write a PNG of the curves here (needs the plot extra)"
    )
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    if args.baseline is not None:
        return _run_ab(args, ks)
    soft, hard = _raise_nofile()
    names = [n for n in STRATEGIES if not args.only or any(s in n for s in args.only.split(","))]
    results: dict[str, dict[int, list[float]]] = {n: {k: [] for k in ks} for n in names}
    total = len(ks) * args.rounds * len(names)
    done = 0
    t_start = time.monotonic()
    for k in ks:
        kills = min(args.kills, k)
        for _ in range(args.rounds):
            order = names[:]
            random.shuffle(order)  # interleaved, in a fresh order each round
            for name in order:
                results[name][k].append(STRATEGIES[name](k, kills))
                done += 1
                _common.progress(done, total, f"K={k} {name}")
    med = {n: {k: statistics.median(v) for k, v in per.items()} for n, per in results.items()}
    k0, k1 = ks[0], ks[-1]
    header = (
        f"{'strategy':<44}"
        + "".join(f"{'K=' + str(k):>11}" for k in ks)
        + f"{'K' + str(k1) + '/K' + str(k0):>11}"
    )
    print("\nCPU per reaped child (µs, median of rounds)")
    print(header)
    print("-" * len(header))
    for n in names:
        row = "".join(f"{med[n][k] * 1e6:>11.1f}" for k in ks)
        print(f"{n:<44}{row}{med[n][k1] / med[n][k0]:>10.2f}x")
    if args.plot:
        _common.plot_lines(
            args.plot,
            "CPU per reaped child with K children alive",
            "K (children alive)",
            "µs of CPU per reaped child",
            {n: {k: v * 1e6 for k, v in per.items()} for n, per in med.items()},
        )
    _common.write(
        args.json,
        "scaling",
        {
            "unit": "seconds of CPU per reaped child",
            "ks": ks,
            "kills_per_run": args.kills,
            "rounds": args.rounds,
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "median": {n: {str(k): v for k, v in per.items()} for n, per in med.items()},
            "samples": {n: {str(k): v for k, v in per.items()} for n, per in results.items()},
        },
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0


if __name__ == "__main__":
    sys.exit(main())
