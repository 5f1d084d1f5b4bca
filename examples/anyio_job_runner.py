"""The same job runner written once for anyio: it runs on asyncio and on trio.

Run: python examples/anyio_job_runner.py
"""

from __future__ import annotations

import anyio

import childproc
from childproc import anyio_host

JOBS = [["sh", "-c", "echo one"], ["sh", "-c", "echo two >&2; exit 1"], ["sh", "-c", "sleep 30"]]


async def main() -> list[str]:
    reports: list[str] = []

    async def job(ctx: anyio_host.AnyioContext, argv: list[str]) -> None:
        try:
            done = await ctx.run(argv, capture_output=True, timeout=0.5)
            reports.append(f"{argv[-1]!r}: exit {done.returncode}, out {done.stdout!r}, err {done.stderr!r}")
        except childproc.TimeoutExpired as e:
            reports.append(f"{argv[-1]!r}: timed out, {e.event}")

    async with anyio_host.open_context() as ctx, anyio.create_task_group() as tg:
        for argv in JOBS:
            tg.start_soon(job, ctx, argv)
    return sorted(reports)


for backend in ("asyncio", "trio"):
    print(f"on {backend}:")
    for line in anyio.run(main, backend=backend):
        print("  " + line)
print("both backends ran every job")
