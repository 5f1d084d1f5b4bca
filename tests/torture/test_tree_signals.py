"""No signal ever reaches a process outside a child's tree, with pids and group ids
recycled around the operations.

``pid_max`` is machine-wide and left alone; instead a helper process churns
short-lived strangers as fast as it can, each leading a group of its own
(``setsid``), so pid and group numbers come round again and again. Meanwhile
this process starts children that lead their groups or have trees, lets them
exit, and signals their groups and trees with SIGUSR1 before, around and after
the exit. A stranger that dies of SIGUSR1 was hit: the helper counts them, and
the count must be 0. (Here ``pid_max`` is 32,768: the short run goes through
about a fifth of the pid space, the long one, ``--torture-long``, round it
many times.)
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable

import pytest

from childproc import PIPE, ChildExitedError, Context, SigchldOwner, _cgroup

CHURN = r"""
import os, signal, sys, time
hit = made = 0
live = []
stop = time.monotonic() + float(sys.argv[1])
done = []
signal.signal(signal.SIGTERM, lambda *_: done.append(1))
while not done and time.monotonic() < stop:
    while len(live) < 64:
        live.append(os.posix_spawn("/bin/sleep", ["sleep", "0.001"], os.environ, setsid=True))
        made += 1
    pid, status = os.waitpid(-1, 0)
    live.remove(pid)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1:
        hit += 1
for pid in live:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1:
        hit += 1
print(made, hit)
"""

KINDS = ["process-group", "cgroup"] if _cgroup.home() is not None else ["process-group"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD, SigchldOwner.LIBXL_ALWAYS])
def test_group_and_tree_signals_never_reach_a_stranger(
    mode: SigchldOwner, scale: int, report: Callable[..., None]
) -> None:
    rounds = max(200, scale // 5)
    seconds = 600.0 if scale > 10_000 else 60.0
    refused = sent = 0
    t0 = time.monotonic()
    with Context(mode) as ctx:
        # The churn is a child of the context too (LIBXL_ALWAYS allows no other).
        churn = ctx.spawn([sys.executable, "-c", CHURN, str(seconds)], stdout=PIPE, text=True)
        try:
            for i in range(rounds):
                kind = KINDS[i % len(KINDS)]
                child = ctx.spawn(["/bin/sleep", "0.001"], kill_tree=kind)
                if i % 3 == 0:  # at once: racing the exit
                    try:
                        if kind == "process-group":
                            child.signal_group(signal.SIGUSR1)
                        else:
                            child.kill_tree(signal.SIGUSR1)
                        sent += 1
                    except ChildExitedError:
                        refused += 1
                event = child.wait(30)
                assert event is not None and event.returncode in (0, -signal.SIGUSR1)
                for _ in range(3):  # after the reap: refused, or (a cgroup) reaches nobody
                    try:
                        if kind == "process-group":
                            child.signal_group(signal.SIGUSR1)
                            pytest.fail("a reaped leader's group was signalled")
                        child.kill_tree(signal.SIGUSR1)
                        sent += 1
                    except ChildExitedError:
                        refused += 1
                    time.sleep(0.0005)  # let the strangers churn through the numbers
                if time.monotonic() - t0 > seconds - 5:
                    break
        finally:
            if churn.poll() is None:
                churn.terminate()  # (it stops churning, waits for its strangers, reports)
            out, _ = churn.communicate(timeout=seconds + 30)
    made, hit = (int(x) for x in out.split()) if out.strip() else (0, 0)
    report(rounds=i + 1, strangers=made, strangers_hit=hit, refused=refused, sent=sent, mode=mode.name)
    assert made > 1000, "the churn made too few strangers to mean anything"
    assert hit == 0, f"{hit} stranger(s) got SIGUSR1"
