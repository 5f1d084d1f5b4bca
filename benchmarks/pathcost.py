"""Path cost: the Python work childproc does per child, counted, not timed.

Wall and CPU time per child are noisy on a shared machine (a few percent between
identical runs), and childproc's own share of them is small beside the kernel's
and the child's. This benchmark counts what the interpreter executes instead:
for each mode and kind of child it starts and waits for ``--n`` children one at
a time (``ctx.spawn(["/bin/true"], on_event)`` or ``ctx.fork(on_event)``, then
``ctx.wait()`` until the callback ran) and counts, with :mod:`sys.monitoring`
(Python 3.12+), the bytecode instructions executed and the calls made per child
(Python and C calls made from Python code). The figures are exact: two runs of
the same code give the same numbers, whatever the machine is doing.

A ``floor`` row does the same with no library (``os.posix_spawn`` or
``os.fork``, ``pidfd_open``, an epoll, ``waitid`` and a dict of callbacks): what
childproc adds beyond it is the library's own path.

``--kinds asyncio-run`` counts ``await ctx.run(["/bin/true"])`` through the
asyncio adapter instead, one at a time on one loop, against an asyncio floor
(``posix_spawn``, the pidfd in ``loop.add_reader``, ``waitid``, a future): the
loop's own work is in both. The table also lists the
functions that execute the most instructions per child (``--top``), which is
where a leaner path starts.

On this machine an instruction costs about 40-60 ns: 1,000 instructions per
child are about 50 us of CPU. Counts say where the work is, not what it costs
in time: the throughput benchmark (``benchmarks/throughput.py``) stays the
judge of speed.

``--baseline SRC`` counts the childproc in ``SRC`` too, for a before/after.

``--ablate`` prices the guarantees: it adds rows (PIDFD, spawn) that count the
same path with one guarantee switched off by patching the tree under test in
the measuring interpreter (never in the library): the pidfd identity checks
(``fstat`` when a pidfd is opened and before it is closed), the read of
SIGCHLD's disposition from the kernel at each start, the callback signature
check, the entry checks (forked, re-entered, chores, recovery), ``wait4``
after the ``waitid`` peek (the rusage), and the SIGCHLD handler bookkeeping;
then all of them at once. What is left when all are off is the cost of the
path's structure, not of what it checks.
"""

from __future__ import annotations

import collections
import os
import select
import sys
from pathlib import Path
from typing import Any

import _common

MODES = ["SELECTIVE_REAP", "PIDFD", "LIBXL", "LIBXL_ALWAYS"]
KINDS = ["spawn", "fork"]  # (and "asyncio-run", asked for by name)


def _run_asyncio(n: int, mode: str | None) -> None:
    """``n`` children one at a time on an asyncio loop: through the adapter's
    ``run`` in ``mode``, or with no library (None)."""
    import asyncio  # noqa: PLC0415

    env = dict(os.environ)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if mode is None:
            for _ in range(n):
                await _common.pidfd_on_loop(loop, ["/bin/true"], env)
            return
        import childproc  # noqa: PLC0415
        from childproc import asyncio_host  # noqa: PLC0415

        async with asyncio_host.open_context(childproc.SigchldOwner[mode]) as ctx:
            for _ in range(n):
                await ctx.run(["/bin/true"], env=env)

    asyncio.run(main())


def _run_floor(kind: str, n: int) -> None:
    if kind == "asyncio-run":
        _run_asyncio(n, None)
        return
    env = dict(os.environ)
    ep = select.epoll()
    done: list[int] = []
    callbacks: dict[int, Any] = {}  # pidfd -> what its exit calls
    try:
        for i in range(n):
            if kind == "spawn":
                pid = os.posix_spawn("/bin/true", ["/bin/true"], env)
            else:
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
            fd = os.pidfd_open(pid)
            ep.register(fd, select.EPOLLIN)
            callbacks[fd] = done.append
            while len(done) <= i:
                for ready, _ in ep.poll():
                    info = os.waitid(os.P_PIDFD, ready, os.WEXITED)
                    ep.unregister(ready)
                    os.close(ready)
                    callbacks.pop(ready)(info.si_status if info is not None else -1)
    finally:
        ep.close()


def _run_childproc(mode: str, kind: str, n: int) -> None:
    if kind == "asyncio-run":
        _run_asyncio(n, mode)
        return
    import childproc  # noqa: PLC0415 - the tree under test, as PYTHONPATH says

    env = dict(os.environ)
    done: list[int] = []

    def on_event(child: Any, event: Any) -> None:
        done.append(event.status)

    with childproc.Context() as ctx:
        ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner[mode]))
        for i in range(n):
            if kind == "spawn":
                ctx.spawn(["/bin/true"], on_event, env=env)
            elif ctx.fork(on_event) is None:
                os._exit(0)
            while len(done) <= i:
                ctx.wait()


def _ablate(name: str) -> None:
    """Switch off one guarantee in the childproc this interpreter imported (see
    ``--ablate``), by rebinding the name its caller looks up."""
    from childproc import _children, _context, _sigchld, _starter, _wakeups  # noqa: PLC0415
    from childproc._status import status_from_siginfo  # noqa: PLC0415
    from childproc._watchers import _base  # noqa: PLC0415

    def reap_own(into: Any, child: Any) -> None:  # one waitid that reaps: no wait4
        info = os.waitid(os.P_PIDFD, child._pidfd, os.WEXITED | os.WNOHANG)
        if info is not None:
            into.append((child, info, (info.si_pid, status_from_siginfo(info.si_code, info.si_status), None)))

    patches: dict[str, list[tuple[object, str, object]]] = {
        "fd identity": [
            (_wakeups, "identify", lambda fd, pid=0: (0, 0, 0, 0)),
            (_wakeups, "fd_state", lambda fd, identity: "ours"),
        ],
        "SIGCHLD read per start": [(_sigchld.HANDLER, "discards_statuses", lambda fresh=False: None)],
        "callback check": [(_starter, "check_callback", lambda *args: None)],
        "entry checks": [(_context.Context, "_enter", lambda self: None)],
        "rusage (wait4)": [(_base, "_reap_own", reap_own)],
        "handler bookkeeping": [(_children.Children, "sync_handler_use_locked", lambda self: None)],
    }
    for target, attribute, value in patches[name]:
        assert hasattr(target, attribute), (name, attribute)  # (renamed: this ablation is stale)
        setattr(target, attribute, value)


ABLATIONS = [
    "fd identity",
    "SIGCHLD read per start",
    "callback check",
    "entry checks",
    "rusage (wait4)",
    "handler bookkeeping",
]


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Count one row (``payload``: mode or "floor", kind, n, top) in this interpreter."""
    mon: Any = sys.monitoring  # type: ignore[attr-defined, unused-ignore]  # (3.12+)
    tool = mon.PROFILER_ID
    mode, kind, n, top = payload["mode"], payload["kind"], payload["n"], payload["top"]
    for name in payload.get("ablate", ()):
        _ablate(name)

    def run(count: int) -> None:
        if mode == "floor":
            _run_floor(kind, count)
        else:
            _run_childproc(mode, kind, count)

    run(5)  # warm: imports, the adaptive interpreter's first specialisations
    instructions: collections.Counter[Any] = collections.Counter()
    calls = [0]
    pid = os.getpid()

    def on_instruction(code: Any, offset: int) -> None:
        instructions[code] += 1

    def on_call(code: Any, offset: int, func: object, arg0: object) -> None:
        calls[0] += 1

    mon.use_tool_id(tool, "childproc-pathcost")
    try:
        mon.register_callback(tool, mon.events.INSTRUCTION, on_instruction)
        mon.register_callback(tool, mon.events.CALL, on_call)
        mon.set_events(tool, mon.events.INSTRUCTION | mon.events.CALL)
        try:
            run(n)
        finally:
            mon.set_events(tool, 0)
    finally:
        mon.free_tool_id(tool)
    assert os.getpid() == pid
    return {
        "instructions": sum(instructions.values()) / n,
        "calls": calls[0] / n,
        "top": [
            [f"{c.co_qualname} ({Path(c.co_filename).name}:{c.co_firstlineno})", k / n]
            for c, k in instructions.most_common(top)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "pathcost", baseline=True)
    parser.add_argument("--n", type=int, default=200, help="children per row")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--top", type=int, default=8, help="functions listed per row (0: none)")
    parser.add_argument(
        "--ablate", action="store_true", help="also price each guarantee (PIDFD, spawn; see above)"
    )
    args = parser.parse_args(argv)
    if sys.version_info < (3, 12):
        parser.error("counting needs sys.monitoring: run it with Python 3.12 or later")
    trees: dict[str, Path] = {"this checkout": _common.ROOT}
    if args.baseline is not None:
        trees["baseline"] = _common.source_tree(args.baseline)
    rows: dict[str, dict[str, Any]] = {}
    modes = args.modes.split(",")
    kinds = args.kinds.split(",")
    jobs: list[tuple[str, str, str, list[str]]] = [("floor", kind, "floor", []) for kind in kinds]
    for mode in modes:
        for side in trees:
            row = f"{mode} ({side})" if len(trees) > 1 else mode
            jobs.extend((row, kind, side, []) for kind in kinds)
    if args.ablate:
        if "spawn" not in kinds or "PIDFD" not in modes or args.baseline is not None:
            parser.error("--ablate counts PIDFD and spawn in this checkout: give them, without --baseline")
        kinds = ["spawn"]  # (the table shows the kind the ablations count)
        jobs = [job for job in jobs if job[1] == "spawn"]
        offs = [[name] for name in ABLATIONS] + [ABLATIONS]
        for off in offs:
            row = "PIDFD without " + (off[0] if len(off) == 1 else "all of these")
            jobs.append((row, "spawn", "this checkout", off))
    for i, (row, kind, side, off) in enumerate(jobs):
        _common.progress(i, len(jobs), f"{row} {kind}")
        mode = "floor" if side == "floor" else "PIDFD" if off else row.split(" (")[0]
        tree = trees["this checkout"] if side == "floor" else trees[side]
        payload = {"mode": mode, "kind": kind, "n": args.n, "top": args.top, "ablate": off}
        rows.setdefault(row, {})[kind] = _common.measure_in(tree, "pathcost", payload)
    _common.progress(len(jobs), len(jobs), "done")

    print(f"Per child ({args.n} children per row, one at a time), counted with sys.monitoring:")
    print("instructions / calls; 'beyond floor' is what the library adds to a loop with no library")
    width = {kind: max(14, len(kind) + 8) for kind in kinds}
    name_width = max(34, *(len(row) + 2 for row in rows))
    header = f"{'row':{name_width}s}" + "".join(
        f"{kind + ' instr':>{width[kind]}s}{'calls':>8s}{'beyond floor':>14s}" for kind in kinds
    )
    print(header)
    print("-" * len(header))
    for row, per in rows.items():
        line = f"{row:{name_width}s}"
        for kind in kinds:
            got = per[kind]
            extra = got["instructions"] - rows["floor"][kind]["instructions"]
            line += f"{got['instructions']:{width[kind]}.0f}{got['calls']:8.0f}{extra:14.0f}"
        print(line)
    if args.top:
        for row, per in rows.items():
            if row == "floor":
                continue
            for kind in kinds:
                print(f"\n{row}, {kind}: most instructions per child")
                for name, count in per[kind]["top"]:
                    print(f"  {count:7.1f}  {name}")
    _common.write(
        args.json,
        "pathcost",
        {"n": args.n, "unit": "per child", "trees": {k: str(v) for k, v in trees.items()}, "rows": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
