"""Every script in examples/ runs as documented: exit status 0 and the output it promises.

Each example runs in its own interpreter, so its children, fds and SIGCHLD
handler never touch the test process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example file -> lines (or parts of lines) its output must contain
EXPECTED: dict[str, list[str]] = {
    "anyio_job_runner.py": [
        "on asyncio:",
        "on trio:",
        "'echo one': exit 0, out b'one\\n', err b''",
        "'echo two >&2; exit 1': exit 1, out b'', err b'two\\n'",
        "'sleep 30': timed out, [",
        "] killed by SIGKILL",
        "both backends ran every job",
    ],
    "asyncio_job_runner.py": [
        "greet: exit 0, stdout 'hello from greet\\n', stderr ''",
        "fail: exit 3, stdout '', stderr 'disk full\\n'",
        "slow: timed out, [",
        "] killed by SIGKILL, partial output b'started\\n'",
        "daemonizes: exit 0, said 'detached'",
        "asyncio's own child: exit code 4",
        "all jobs accounted for",
    ],
    "asyncio_children.py": [
        "childproc's child: [",
        "] exited with status 3",
        "asyncio's child: exit code 4",
        "the wait was cancelled, so the sleeper was killed",
        "] killed by SIGKILL",
        "both sides got their true exit codes",
    ],
    "child_events.py": [
        f"code=STOPPED status={int(signal.SIGSTOP)}",
        "code=CONTINUED status=0",
        f"code=KILLED status={int(signal.SIGKILL)}",
        "send_signal after exit: ChildExitedError",
        "event sequence as expected",
    ],
    "forkserver_workers.py": [
        "this process now has 2 threads",
        "results: ['9 threads=1', '16 threads=1', '25 threads=1']",
        "from the pipe: hello from worker ",
        "] exited with status 0",
        "] exited with status 3",
        "the heartbeat thread ran throughout",
        "every worker answered and exited as expected",
    ],
    "libxl_quickstart.py": [
        "exited with status 0",
        "exited with status 3",
        "exited with status 42",
        "killed by SIGTERM",
        "all children accounted for",
    ],
    "mainloop_selectors.py": [
        "childproc's, callback ran",
        "not childproc's, exited with status 42",
        "childproc's children exited with [0, 5, 7]; the host's with 42",
    ],
    "run_and_capture.py": [
        "stdout='hello\\n' stderr='warning\\n' returncode=0",
        "tr said SHOUT",
        "check=True raised: exit 2, stderr b'failing\\n', event [",
        "] exited with status 2",
        "timed out after 0.5s with output b'working\\n': [",
        "] killed by SIGKILL",
        "returned at once: done",
        "all runs as expected",
    ],
    "selective_reap_subprocess.py": [
        "subprocess.run returncode: 5",
        "subprocess.run returncode: 6",
        "exit code: 3",
        "exit code: 4",
        "both sides got their true exit codes",
    ],
    "trio_children.py": [
        "] exited with status 3",
        "trio's child: exit code 4",
        "both sides got their true exit codes",
    ],
    "tree_job_runner.py": [
        "job 1 timed out after 1.0s: [",
        "] killed by SIGKILL",
        "job 2 stopped: [",
        "job 3 killed with the context: True",
        "nothing left behind",
    ],
    "twisted_children.py": [
        "] exited with status 3",
        "Twisted's child: exit code 4",
        "both sides got their true exit codes",
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


# More ways to run an example: (file, arguments...); the output must contain the same lines.
VARIANTS: list[tuple[str, ...]] = [
    ("asyncio_children.py", "uvloop"),
    ("tree_job_runner.py", "--process-group"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    check_run(name)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("variant", VARIANTS, ids=" ".join)
def test_example_variant_runs(variant: tuple[str, ...]) -> None:
    check_run(*variant)


def check_run(name: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        timeout=60,
        capture_output=True,
        text=True,
        check=False,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stderr == "", report
    for expected in EXPECTED[name]:
        assert expected in proc.stdout, report
