"""I/O: capturing a child's output, against a loop with no library.

(Named ``pipe_io``, not ``io``: run as a script, ``benchmarks/`` comes first on
``sys.path``, where a module called ``io`` would stand for the standard one.)

Each row captures ``--mib`` MiB of a child's stdout (``head -c N /dev/zero``)
in a fresh interpreter of its own, ``--rounds`` times in a shuffled order, and
reports the median throughput relative to the floor measured in the same
rounds (1.00 = as fast as the floor; higher is faster) and the interpreter's
peak resident memory over the output's size (``VmHWM``, minus what the
interpreter held before capturing). Each row imports what it uses before its
clock starts: the capture is timed, not the import of asyncio or trio.

Rows:

* ``floor``: ``os.posix_spawn`` with the pipe at fd 1, ``os.read(fd, 1 MiB)``
  into a list until EOF, ``waitpid`` (the list is not joined: the floor's
  memory is the output once, its time the reads alone);
* ``childproc run``: ``ctx.run(argv, capture_output=True)``;
* ``subprocess.run``: ``subprocess.run(argv, capture_output=True)``, for
  reference;
* ``childproc asyncio run`` against ``asyncio communicate``
  (``create_subprocess_exec`` then ``communicate()``), ``childproc trio run``
  against ``trio run_process`` (``capture_stdout=True``), and ``childproc
  anyio run`` (anyio's asyncio backend): each adapter beside its host's own API.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

import _common

ROWS = [
    "floor",
    "childproc run",
    "subprocess.run",
    "childproc asyncio run",
    "asyncio communicate",
    "childproc trio run",
    "trio run_process",
    "childproc anyio run",
]


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])


def measure(payload: dict[str, Any]) -> dict[str, float]:
    """Capture once in this interpreter: seconds and peak memory over the size."""
    row, size = payload["row"], payload["mib"] << 20
    argv = ["head", "-c", str(size), "/dev/zero"]
    _import_for(row)
    before = _peak_kib()
    t0 = time.perf_counter()
    if row == "floor":
        r, w = os.pipe()
        pid = os.posix_spawnp("head", argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
        os.close(w)
        chunks = []
        got = 0
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
            got += len(chunk)
        os.close(r)
        os.waitpid(pid, 0)
    elif row == "childproc run":
        import childproc  # noqa: PLC0415 - the tree under test

        with childproc.Context() as ctx:
            got = len(ctx.run(argv, capture_output=True).stdout)
    elif row == "subprocess.run":
        import subprocess  # noqa: PLC0415

        got = len(subprocess.run(argv, capture_output=True, check=True).stdout)
    else:
        got = _capture_async(row, argv)
    seconds = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"{row} captured {got} bytes of {size}")
    return {"seconds": seconds, "peak_over_size": (_peak_kib() - before) * 1024 / size}


def _import_for(row: str) -> None:
    """Import what ``row`` uses before the clock starts: the capture is timed,
    not the interpreter loading asyncio (about 50 ms) or trio (about 120 ms)."""
    import childproc  # noqa: PLC0415, F401 - the tree under test

    for word, modules in (
        ("asyncio", ("asyncio", "childproc.asyncio_host")),
        ("trio", ("trio", "childproc.trio_host")),
        ("anyio", ("anyio", "anyio._backends._asyncio", "childproc.anyio_host")),
        ("subprocess", ("subprocess",)),
    ):
        if word in row:
            for module in modules:
                __import__(module)


def _capture_async(row: str, argv: list[str]) -> int:
    """The event-loop rows: bytes captured."""
    if "trio" in row:
        import trio  # noqa: PLC0415

        async def with_trio() -> int:
            if row == "trio run_process":
                return len((await trio.run_process(argv, capture_stdout=True)).stdout)
            from childproc import trio_host  # noqa: PLC0415

            async with trio_host.open_context() as ctx:
                return len((await ctx.run(argv, capture_output=True)).stdout)

        return trio.run(with_trio)
    if row == "childproc anyio run":
        import anyio  # noqa: PLC0415

        from childproc import anyio_host  # noqa: PLC0415

        async def with_anyio() -> int:
            async with anyio_host.open_context() as ctx:
                return len((await ctx.run(argv, capture_output=True)).stdout)

        return anyio.run(with_anyio)
    import asyncio  # noqa: PLC0415

    async def with_asyncio() -> int:
        if row == "asyncio communicate":
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            return len(out)
        from childproc import asyncio_host  # noqa: PLC0415

        async with asyncio_host.open_context() as ctx:
            return len((await ctx.run(argv, capture_output=True)).stdout)

    return asyncio.run(with_asyncio())


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, "pipe_io")
    parser.add_argument("--mib", type=int, default=256, help="MiB captured per run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    samples: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    jobs = [row for _ in range(args.rounds) for row in ROWS]
    order = list(range(len(jobs)))
    for k in range(args.rounds):  # shuffled within each round
        part = order[k * len(ROWS) : (k + 1) * len(ROWS)]
        random.shuffle(part)
        order[k * len(ROWS) : (k + 1) * len(ROWS)] = part
    for i, j in enumerate(order):
        row = jobs[j]
        _common.progress(i, len(jobs), row)
        samples[row].append(_common.measure_in(_common.ROOT, "pipe_io", {"row": row, "mib": args.mib}))
    _common.progress(len(jobs), len(jobs), "done")
    floor = [s["seconds"] for s in samples["floor"]]
    table: dict[str, dict[str, float]] = {}
    print(f"Capturing {args.mib} MiB of a child's stdout, {args.rounds} rounds (median):")
    print(f"{'row':24s}{'vs floor':>10s}{'seconds':>10s}{'peak/size':>11s}")
    for row in ROWS:
        secs = [s["seconds"] for s in samples[row]]
        ratio = _common.median([f / s for f, s in zip(floor, secs, strict=True)])
        peak = _common.median([s["peak_over_size"] for s in samples[row]])
        table[row] = {"vs_floor": ratio, "seconds": _common.median(secs), "peak_over_size": peak}
        print(f"{row:24s}{ratio:10.2f}{table[row]['seconds']:10.3f}{peak:11.2f}")
    _common.write(
        args.json, "pipe_io", {"mib": args.mib, "rounds": args.rounds, "rows": table, "samples": samples}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
