"""trio: childproc's children beside ``trio.run_process``.

``trio_host.open_context()`` serves the context from a task that waits on its
fd with ``trio.lowlevel.wait_readable``. trio runs a child of its own while
childproc's child is running, and each side gets its own exit code.

Run it with ``python examples/trio_children.py``.
"""

from __future__ import annotations

import trio

from childproc import trio_host

LIBRARY_CODE = 3  # exit code of childproc's child
HOST_CODE = 4  # exit code of trio's child


async def main() -> int:
    async with trio_host.open_context() as ctx:
        print(f"mode: {ctx.mode.name}")
        ours = ctx.spawn(["/bin/sh", "-c", f"sleep 0.2; exit {LIBRARY_CODE}"])
        host = await trio.run_process(["/bin/sh", "-c", f"sleep 0.1; exit {HOST_CODE}"], check=False)
        event = await ours.wait()
    print(f"childproc's child: {event}")
    print(f"trio's child: exit code {host.returncode}")
    if event.returncode != LIBRARY_CODE or host.returncode != HOST_CODE:
        print("wrong statuses")
        return 1
    print("both sides got their true exit codes")
    return 0


if __name__ == "__main__":
    raise SystemExit(trio.run(main))
