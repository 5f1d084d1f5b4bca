"""LIBXL mode: fork a few children and learn how each one ended.

In LIBXL mode childproc installs its SIGCHLD handler while it has children and
reaps with waitpid(-1), so this program must have no other children. LIBXL is
not the default (``Context()`` is SELECTIVE_REAP): it is asked for by name.

Run it with ``python examples/libxl_quickstart.py``.
"""

from __future__ import annotations

import os
import signal

import childproc

# What each child does, and how its end must be described.
PLAN = [
    (0, "exited with status 0"),
    (3, "exited with status 3"),
    (42, "exited with status 42"),
    (-signal.SIGTERM, "killed by SIGTERM"),  # negative: the child kills itself
]


def main() -> int:
    endings: dict[int, str] = {}  # pid -> describe_status(status)

    def on_exit(pid: int, status: int) -> None:
        # Runs exactly once per child, from ctx.wait() below.
        endings[pid] = childproc.describe_status(status)

    expected: dict[int, str] = {}
    with childproc.Context(childproc.SigchldOwner.LIBXL) as ctx:
        for code, description in PLAN:
            pid = ctx.child_fork(on_exit)
            if pid == 0:  # in the child
                if code < 0:
                    os.kill(os.getpid(), -code)
                os._exit(code)
            expected[pid] = description

        while ctx.children:  # pids whose callback has not run yet
            if ctx.wait(timeout=10) == 0:
                print("timed out waiting for children")
                return 1

    for pid, description in expected.items():
        print(f"child {pid} {endings[pid]}")
        if endings[pid] != description:
            print(f"  wrong: expected {description!r}")
            return 1
    print("all children accounted for")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
