"""Torture: Ctrl-C at random moments while the main thread spawns, forks, adopts and waits.

Every mode; 150 SIGINTs per mode in the short run, 1,000 with ``--torture-long``.
Python's own SIGINT handler raises a real KeyboardInterrupt; the main thread catches it
and goes on, like a REPL. Each child reports its pid on a pipe as it starts and exits
with status ``pid % 200``; afterwards every reported child was delivered exactly once
with that status, nothing is stuck in ``ctx.children`` after a bounded drain, and no
zombie is left after ``close()``. The machinery (the one-at-a-time interrupter that
keeps the test's own bookkeeping KI-proof, callbacks that run no bytecode) is in
tests/integration/test_hostile.py.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytest

from childproc import Context, Hooks, SigchldOwner
from tests.integration.procutil import proc_state, proc_states, wait_until
from tests.integration.test_hostile import (
    MAINLOOP,
    MODE_IDS,
    MODES,
    close_interrupted,
    default_sigint,
    no_unknown_warnings,
    run_storm,
)


@pytest.fixture
def interrupts(request: pytest.FixtureRequest) -> int:
    return 1_000 if request.config.getoption("--torture-long") else 150


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_sigint_storm_while_spawning_forking_and_waiting(
    mode: SigchldOwner, interrupts: int, caplog: pytest.LogCaptureFixture, report: Callable[..., None]
) -> None:
    # Children exit at once (no gate): exits are reaped and delivered during the storm,
    # so interrupts land in reaping and delivery too, not only in making children.
    figures = run_storm(
        mode, interrupts=interrupts, max_children=5 * interrupts, gated=False, seed=2, caplog=caplog
    )
    report(interrupts=interrupts, **{k: v for k, v in figures.items() if k != "unadopted"})


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_sigint_storm_with_children_outstanding(
    mode: SigchldOwner, interrupts: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Children wait at a gate until the storm is over: each must then be in ctx.children
    # and found by ctx.child(pid), whichever call the interrupt cut short.
    run_storm(
        mode, interrupts=interrupts, max_children=min(interrupts, 300), gated=True, seed=3, caplog=caplog
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_sigint_in_close_again_and_again(
    mode: SigchldOwner, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="childproc")
    rounds = 300 if request.config.getoption("--torture-long") else 30
    rng = random.Random(9)
    for _ in range(rounds):
        ctx = Context()
        pids: list[int] = []
        try:
            ctx.setmode(Hooks(chldowner=mode))
            if mode is not MAINLOOP:  # MAINLOOP's close() leaves exited children to the application
                pids += [ctx.spawn(["/bin/sh", "-c", f"exit {c}"]).pid for c in (1, 2)]
            pids += [ctx.spawn(["sleep", "30"], kill_on_close=True).pid]
            with default_sigint():
                close_interrupted(ctx, rng.uniform(0, 0.003))
        finally:
            ctx.close()
        assert wait_until(lambda: all(proc_state(p) is None for p in pids), 3), proc_states(pids)  # noqa: B023
    no_unknown_warnings(caplog)
