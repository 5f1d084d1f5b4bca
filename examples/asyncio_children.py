"""asyncio: childproc's children beside asyncio's own, and a cancelled wait.

The context is attached to the running loop with ``loop.add_reader``; it takes
no signal handler from asyncio. asyncio starts a child of its own with
``create_subprocess_exec`` while childproc's child is running, and each side
gets its own exit code. Then a wait on a sleeping child is cancelled (here by
a timeout): ``kill_on_cancel=True`` kills the child, and its exit is still
reported to the next ``wait()``.

Run it with ``python examples/asyncio_children.py`` (add ``uvloop`` to run it
on uvloop: ``python examples/asyncio_children.py uvloop``).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from childproc import EventCode, asyncio_host

LIBRARY_CODE = 3  # exit code of childproc's child
HOST_CODE = 4  # exit code of asyncio's child


async def main() -> int:
    async with asyncio_host.open_context() as ctx:
        print(f"mode: {ctx.mode.name}")
        ours = ctx.spawn(["/bin/sh", "-c", f"sleep 0.2; exit {LIBRARY_CODE}"])
        host = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"sleep 0.1; exit {HOST_CODE}")
        event, host_code = await asyncio.gather(ours.wait(), host.wait())
        print(f"childproc's child: {event}")
        print(f"asyncio's child: exit code {host_code}")

        sleeper = ctx.spawn(["sleep", "60"])
        try:
            await asyncio.wait_for(sleeper.wait(kill_on_cancel=True), timeout=0.2)
        except asyncio.TimeoutError:
            print("the wait was cancelled, so the sleeper was killed")
        final = await sleeper.wait()  # the exit is not lost
        print(f"sleeper: {final}")

    killed = final.code is EventCode.KILLED and final.status == signal.SIGKILL
    if event.returncode != LIBRARY_CODE or host_code != HOST_CODE or not killed:
        print("wrong statuses")
        return 1
    print("both sides got their true exit codes")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        raise SystemExit(uvloop.run(main()))
    raise SystemExit(asyncio.run(main()))
