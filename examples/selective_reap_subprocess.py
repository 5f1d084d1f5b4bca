"""SELECTIVE_REAP mode beside subprocess: both sides get their true exit codes.

childproc waits only on the pids it made (through pidfds where the kernel has
them), so subprocess.run() can reap its own child at the same time. In LIBXL
mode, by contrast, childproc's waitpid(-1) could take the subprocess's child
first, and subprocess would then report returncode 0.

Run it with ``python examples/selective_reap_subprocess.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import childproc

LIBRARY_CODES = (3, 4)  # exit codes of childproc's children
SUBPROCESS_CODES = (5, 6)  # exit codes of subprocess.run's children


def main() -> int:
    library: dict[int, int] = {}  # pid -> exit code

    def on_exit(pid: int, status: int) -> None:
        library[pid] = os.waitstatus_to_exitcode(status)

    with childproc.Context() as ctx:
        ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner.SELECTIVE_REAP))
        for code in LIBRARY_CODES:
            if ctx.child_fork(on_exit) == 0:
                time.sleep(0.05)  # die while subprocess.run() below is busy
                os._exit(code)

        returncodes: list[int] = []
        for code in SUBPROCESS_CODES:
            proc = subprocess.run([sys.executable, "-c", f"raise SystemExit({code})"], check=False)
            print(f"subprocess.run returncode: {proc.returncode}")
            returncodes.append(proc.returncode)

        while ctx.children:
            if ctx.wait(timeout=10) == 0:
                print("timed out waiting for childproc's children")
                return 1
        for pid, code in library.items():
            print(f"childproc child {pid} exit code: {code}")

    if sorted(library.values()) != list(LIBRARY_CODES) or returncodes != list(SUBPROCESS_CODES):
        print("wrong exit codes")
        return 1
    print("both sides got their true exit codes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
