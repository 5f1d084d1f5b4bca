"""subprocess.run, ported by changing one line: capture, input, check=True, timeout.

Run: python examples/run_and_capture.py
"""

from __future__ import annotations

import os
import signal
import subprocess

import childproc

with childproc.Context() as ctx:  # SELECTIVE_REAP: never touches another's child
    # Capture both streams, as text.
    r = ctx.run(["sh", "-c", "echo hello; echo warning >&2"], capture_output=True, text=True)
    print(f"stdout={r.stdout!r} stderr={r.stderr!r} returncode={r.returncode}")

    # Feed input and read the result.
    r = ctx.run(["tr", "a-z", "A-Z"], input=b"shout", stdout=childproc.PIPE)
    print(f"tr said {r.stdout.decode()}")

    # check=True: childproc's exception, which is subprocess's too, with the final event.
    try:
        ctx.run(["sh", "-c", "echo failing >&2; exit 2"], stderr=childproc.PIPE, check=True)
    except childproc.CalledProcessError as e:
        assert isinstance(e, subprocess.CalledProcessError)
        print(f"check=True raised: exit {e.returncode}, stderr {e.stderr!r}, event {e.event}")

    # A timeout kills and reaps the child; the output so far comes with the exception.
    try:
        ctx.run(["sh", "-c", "echo working; sleep 30"], capture_output=True, timeout=0.5)
    except childproc.TimeoutExpired as e:  # (a subprocess.TimeoutExpired as well)
        print(f"timed out after {e.timeout}s with output {e.output!r}: {e.event}")

    # A background grandchild holding the pipe does not hold run() up.
    r = ctx.run(["sh", "-c", "sleep 30 & echo $!; echo done"], capture_output=True, text=True)
    grandchild, word = r.stdout.split()
    print(f"returned at once: {word}")
    os.kill(int(grandchild), signal.SIGKILL)  # (tidy up the grandchild the example made)
print("all runs as expected")
