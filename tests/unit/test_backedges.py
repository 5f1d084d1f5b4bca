"""No loop in childproc (or in the tests' Ctrl-C harness) lets a KeyboardInterrupt
skip its ``try``/``with`` on CPython 3.13: see :mod:`tests.backedges`."""

from __future__ import annotations

import ast
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.backedges import escapes_in_file

ROOT = Path(__file__).resolve().parents[2]

#: The fork server's own process ignores SIGINT for its whole life (Server.serve):
#: no KeyboardInterrupt can be raised in it.
NO_SIGINT = {"childproc/_fork_server.py"}
#: Where the tests send real SIGINTs (file -> its top-level functions and classes that
#: do, None for all): their own bookkeeping must not be skipped either.
HARNESS: dict[str, set[str] | None] = {
    "tests/integration/test_hostile.py": {
        "default_sigint",
        "Interrupter",
        "close_interrupted",
        "Storm",
        "run_storm",
        "test_sigint_while_blocked_in_wait",
        "test_repl_loop_survives_200_interrupts",
        "test_sigint_during_close",
    },
    "tests/integration/test_interrupt_points.py": {
        "test_interrupt_pending_when_the_sigchld_handler_runs_reaches_the_caller"
    },
    "tests/torture/test_hostile_torture.py": None,
    "tests/integration/test_trees.py": {"test_a_ctrl_c_in_kill_tree_leaves_the_tree_thawed_and_no_fd"},
}

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="CPython 3.13's compiler (gh-130279)")

# Each loop runs until interrupted and checks for signals only at its back-edges;
# ``entered()`` says the frame is inside its ``try`` (the SIGINT is sent after it).
SHAPES = """
def while_condition(stop, entered, _):
    try:
        entered()
        while not stop:
            pass
    except KeyboardInterrupt:
        return "caught"

def while_true_break(stop, entered, _):
    try:
        entered()
        while True:
            if stop:
                break
    except KeyboardInterrupt:
        return "caught"

def if_ends_the_body(items, entered, f):
    try:
        entered()
        for x in items:
            if x:
                f()
    except KeyboardInterrupt:
        return "caught"

def if_continue_first(items, entered, f):
    try:
        entered()
        for x in items:
            if not x:
                continue
            f()
    except KeyboardInterrupt:
        return "caught"
"""
ESCAPING = {"while_condition", "if_ends_the_body"}
ROUNDS = 20


def _flagged(path: Path) -> dict[str, list[int]]:
    """The top-level functions and classes of ``path`` holding loops the audit names,
    with those loops' lines (module-level code under ``""``)."""
    found: dict[str, list[int]] = {}
    tops = [
        node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    for line in (e.line for e in escapes_in_file(path)):
        owner = next((n.name for n in tops if n.lineno <= line <= (n.end_lineno or 0)), "")
        found.setdefault(owner, []).append(line)
    return found


@needs_313
def test_the_audit_names_the_loops_that_interrupts_escape(tmp_path: Path) -> None:
    path = tmp_path / "shapes.py"
    path.write_text(SHAPES)
    assert set(_flagged(path)) == ESCAPING


def _interrupted(shape: Callable[..., object], arg: object) -> bool:
    """Run ``shape`` until a SIGINT lands in it; True if the interrupt escaped its
    ``try`` (False: its ``except`` caught it)."""
    main = threading.get_ident()
    entered = threading.Event()

    def send() -> None:
        entered.wait()
        time.sleep(random.uniform(0.001, 0.003))
        signal.pthread_kill(main, signal.SIGINT)

    sender = threading.Thread(target=send, name="test-backedge-sigint")
    try:
        sender.start()  # (nothing is sent before the shape is inside its try)
        assert shape(arg, entered.set, print) == "caught"
        return False
    except KeyboardInterrupt:
        return True
    finally:
        sender.join()


@pytest.mark.timeout(60)
def test_the_audit_agrees_with_the_interpreter(tmp_path: Path) -> None:
    """What the audit reads from the bytecode is what the interpreter does: a shape it
    passes never lets an interrupt through (a shape it names does, whenever the
    interrupt lands on the loop rather than in ``entered()``'s own return)."""
    path = tmp_path / "shapes.py"
    path.write_text(SHAPES)
    flagged = _flagged(path)
    namespace: dict[str, Any] = {}
    exec(compile(SHAPES, str(path), "exec"), namespace)
    assert threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for name in ["while_condition", "while_true_break", "if_ends_the_body", "if_continue_first"]:
            arg = False if name.startswith("while") else iter(int, 1)  # (zeros, endlessly)
            escaped = sum(_interrupted(namespace[name], arg) for _ in range(ROUNDS))
            if name in flagged:
                assert escaped > ROUNDS // 2, (name, sys.version_info[:2], escaped)
            else:
                assert escaped == 0, (name, sys.version_info[:2], escaped)
    finally:
        signal.signal(signal.SIGINT, old)


def _relative(escape: object) -> str:
    return str(escape).replace(str(ROOT) + "/", "")


def test_no_loop_in_childproc_or_the_harness_skips_its_try_on_an_interrupt() -> None:
    files = [p for p in sorted((ROOT / "childproc").rglob("*.py")) if _relative(p) not in NO_SIGINT]
    found = [_relative(e) for path in files for e in escapes_in_file(path)]
    for name, parts in HARNESS.items():
        flagged = _flagged(ROOT / name)
        found += [f"{name}:{n}" for part, ns in flagged.items() if parts is None or part in parts for n in ns]
    assert not found, (
        "On CPython 3.13 a KeyboardInterrupt at these loops' back-edges leaves the function without "
        "running its except/finally/__exit__ (python/cpython#130279; see tests/backedges.py). Write "
        "'while True: if not cond: break' instead of 'while cond:', do not end a loop body with a bare "
        "'if' (put 'if not cond: continue' first), or move the loop into a function of its own: "
        + ", ".join(found)
    )
