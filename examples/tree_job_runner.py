"""A job runner that times out a shell pipeline and leaves nothing behind.

Each job is a shell pipeline whose processes start more of their own: a
background job, a daemon that calls setsid() to get away, a double fork. With
``kill_tree=KIND`` each job runs in a tree of its own, and a timeout, a stop or
the context's close reaches all of it: a cgroup where this process may make one
(everything, however it tried to leave), else the job's process group (what
left the group escapes; the runner then says so).

Run: python examples/tree_job_runner.py [--process-group]
(``--process-group`` asks for the fallback even where cgroups work.)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

import childproc


def alive(pid: int) -> bool:
    """Running, and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone (ENOENT; ESRCH while it goes)
        return False


def started(report: str, count: int) -> list[int]:
    """The pids a job wrote to ``report``, once it wrote ``count`` of them."""
    for _ in range(1000):
        if os.path.exists(report):
            with open(report) as f:
                pids = f.read().split()
            if len(pids) >= count:
                return [int(p) for p in pids]
        time.sleep(0.01)
    raise RuntimeError(f"the job never wrote {count} pids")


def gone(pids: list[int]) -> bool:
    """Whether every pid is gone, after giving the kill a moment."""
    for _ in range(500):
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.01)
    return False


FALLBACK = "--process-group" in sys.argv
KIND = "process-group" if FALLBACK else True  # True: the best tree there is here
GUARANTEE = "process-group" if FALLBACK else childproc.tree_guarantee()

ok = True
with tempfile.TemporaryDirectory() as tmp, childproc.Context() as ctx:
    print(f"trees: {GUARANTEE}")

    # 1. A pipeline that would run for a minute, with a daemon that setsid()s away
    #    and a double-forked sleeper. The timeout kills the whole tree.
    report = os.path.join(tmp, "job1")
    pipeline = (
        f"(setsid sleep 60 & echo $! >> {report}); "
        f"(sh -c 'sleep 60 & echo $! >> {report}' &); "
        f"yes | head -c 100000000 | sleep 60 & echo $! >> {report}; wait"
    )
    t0 = time.monotonic()
    try:
        ctx.run(["sh", "-c", pipeline], kill_tree=KIND, timeout=1.0)
    except childproc.TimeoutExpired as e:
        print(f"job 1 timed out after {e.timeout}s: {e.event}")
    pids = started(report, 3)
    if GUARANTEE == "cgroup":
        print(f"job 1: all {len(pids)} background processes gone: {gone(pids)}")
        ok &= gone(pids)
    else:  # the setsid'd daemon left the group: the documented escape
        escaped = [p for p in pids if alive(p)]
        print(f"job 1: escaped the process group: {len(escaped)} (killed by the runner)")
        for p in escaped:  # through a pidfd checked to be the setsid'd sleeper: never a recycled pid
            try:
                fd = os.pidfd_open(p)
            except ProcessLookupError:
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().startswith(b"sleep\0"):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)

    # 2. stop(): SIGTERM to the whole tree, SIGKILL after the grace for what ignores it.
    report = os.path.join(tmp, "job2")
    job = ctx.spawn(
        ["sh", "-c", f"trap '' TERM; sh -c \"trap '' TERM; sleep 60\" & echo $! >> {report}; wait"],
        kill_tree=KIND,
    )
    pids = started(report, 1)
    event = job.stop(grace=0.5)
    print(f"job 2 stopped: {event} (tree {job.tree_guarantee})")
    ok &= event is not None and event.returncode == -signal.SIGKILL and gone(pids)

    # 3. A job still running when the runner shuts down: kill_on_close takes its tree too.
    report = os.path.join(tmp, "job3")
    ctx.spawn(["sh", "-c", f"sleep 60 & echo $! >> {report}; wait"], kill_tree=KIND, kill_on_close=True)
    last = started(report, 1)

ok &= gone(last)
print(f"job 3 killed with the context: {gone(last)}")
print("nothing left behind" if ok else "SOMETHING WAS LEFT BEHIND")
sys.exit(0 if ok else 1)
