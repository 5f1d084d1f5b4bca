"""An asyncio job runner: many commands at once, output captured, a timeout each.

Run: python examples/asyncio_job_runner.py

The jobs run beside asyncio's own subprocesses without either side touching the
other's children; a job that overruns is killed and reaped, and what it wrote so
far is kept; a job whose background grandchild keeps the pipe open does not
hold the runner up.
"""

from __future__ import annotations

import asyncio
import os
import signal

import childproc
from childproc import asyncio_host

JOBS = {
    "greet": ["sh", "-c", "echo hello from $0", "greet"],
    "fail": ["sh", "-c", "echo 'disk full' >&2; exit 3"],
    "slow": ["sh", "-c", "echo started; sleep 30"],
    "daemonizes": ["sh", "-c", "sleep 30 & echo $!; echo detached"],
}


async def run_job(ctx: asyncio_host.AsyncContext, name: str, argv: list[str]) -> str:
    try:
        done = await ctx.run(argv, capture_output=True, text=True, timeout=1.0)
    except childproc.TimeoutExpired as e:
        return f"{name}: timed out, {e.event}, partial output {e.output!r}"
    if name == "daemonizes":  # tidy up the grandchild the job left behind
        grandchild, word = done.stdout.split()
        os.kill(int(grandchild), signal.SIGKILL)
        return f"{name}: exit {done.returncode}, said {word!r}"
    return f"{name}: exit {done.returncode}, stdout {done.stdout!r}, stderr {done.stderr!r}"


async def main() -> None:
    async with asyncio_host.open_context() as ctx:
        theirs = await asyncio.create_subprocess_exec("sh", "-c", "exit 4")  # asyncio's own
        reports = await asyncio.gather(*(run_job(ctx, name, argv) for name, argv in JOBS.items()))
        for line in reports:
            print(line)
        print(f"asyncio's own child: exit code {await theirs.wait()}")


asyncio.run(main())
print("all jobs accounted for")
