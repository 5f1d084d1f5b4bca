"""Torture: an ignored SIGCHLD and a host that closes and restores its stdio, many times.

* SIG_IGN: LIBXL_ALWAYS replaces an ignored disposition while it runs, so every one of
  many children is delivered exactly once with its true status; the modes that leave
  the disposition alone refuse every start (SigchldIgnoredError) and leave nothing
  behind; SIG_IGN is back after ``close()``.
* fd juggling: the host closes fd 0, 1 or 2 around every spawn and ``dup2``\\ s it back;
  no childproc fd ever lands there, every exit arrives, the host's stdio is intact.

Short in CI; ``--torture-long`` runs 20x as many children.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from childproc import ChildEvent, Context, Hooks, SigchldIgnoredError, SigchldOwner

MODES_THAT_REFUSE = (SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD, SigchldOwner.MAINLOOP)
REAPING_MODES = (
    SigchldOwner.LIBXL,
    SigchldOwner.LIBXL_ALWAYS,
    SigchldOwner.SELECTIVE_REAP,
    SigchldOwner.PIDFD,
)


@pytest.fixture
def rounds(request: pytest.FixtureRequest) -> int:
    return 4_000 if request.config.getoption("--torture-long") else 200


@contextmanager
def sigchld_ignored() -> Iterator[None]:
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.timeout(600)
def test_libxl_always_delivers_every_exit_under_sig_ign(rounds: int) -> None:
    seen: dict[int, list[ChildEvent]] = {}

    def record(child: object, event: ChildEvent) -> None:
        seen.setdefault(event.pid, []).append(event)

    with sigchld_ignored():
        with Context(SigchldOwner.LIBXL_ALWAYS) as ctx:
            want = {}
            for i in range(rounds):
                child = ctx.spawn(["/bin/sh", "-c", f"exit {i % 100}"], record)
                want[child.pid] = i % 100
                if i % 16 == 15:
                    while ctx.children:
                        ctx.wait(5)
            while ctx.children:
                ctx.wait(5)
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN  # put back at close
    assert {pid: [e.returncode for e in evs] for pid, evs in seen.items()} == {
        pid: [code] for pid, code in want.items()
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES_THAT_REFUSE, ids=lambda m: m.name)
def test_modes_that_leave_sig_ign_refuse_every_start(mode: SigchldOwner, rounds: int) -> None:
    with Context(mode) as ctx, sigchld_ignored():
        for _ in range(rounds // 10):
            with pytest.raises(SigchldIgnoredError, match="SIG_IGN"):
                ctx.spawn(["/bin/true"])
            with pytest.raises(SigchldIgnoredError, match="LIBXL_ALWAYS"):
                ctx.child_fork(lambda pid, status: None)
        assert not ctx.children


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [*REAPING_MODES, SigchldOwner.MAINLOOP], ids=lambda m: m.name)
def test_host_closes_and_restores_stdio_around_every_spawn(mode: SigchldOwner, rounds: int) -> None:
    rng = random.Random(5)
    before = {fd: os.fstat(fd) for fd in (0, 1, 2)}
    saved = {fd: os.dup(fd) for fd in (0, 1, 2)}
    codes: dict[int, int] = {}
    try:
        with Context() as ctx:
            ctx.setmode(Hooks(chldowner=mode))
            for i in range(rounds):
                low = rng.choice((0, 1, 2))
                os.close(low)
                try:
                    child = ctx.spawn(["/bin/sh", "-c", f"exit {i % 50}"])
                    assert ctx.fileno() > 2 and (child.pidfd is None or child.pidfd > 2)
                finally:
                    os.dup2(saved[low], low)
                if mode is SigchldOwner.MAINLOOP:
                    _, status = os.waitpid(child.pid, 0)
                    ctx.childproc_reaped(child.pid, status)
                event = child.wait(10)
                assert event is not None
                assert event.returncode is not None
                codes[child.pid] = event.returncode
            assert not ctx.children
        for fd in (0, 1, 2):
            now = os.fstat(fd)
            assert (now.st_dev, now.st_ino) == (before[fd].st_dev, before[fd].st_ino), fd
    finally:
        for fd in saved.values():
            os.close(fd)
    assert sorted(codes.values()) == sorted(i % 50 for i in range(rounds))
