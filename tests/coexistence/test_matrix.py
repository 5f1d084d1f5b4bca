"""The coexistence matrix: every host x every mode, each cell in a fresh interpreter.

The expected outcome of each cell is the contract (``expected``). The observed
results are also committed, per Python version, in ``docs/coexistence.json``,
from which the docs build their table: this test fails if the two differ, so
the documentation cannot drift from the code. After a deliberate change, run
``CHILDPROC_UPDATE_MATRIX=1 python -m pytest tests/coexistence`` on each
Python version to rewrite that file.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent.parent / "docs" / "coexistence.json"
MODES = ["LIBXL", "MAINLOOP", "LIBXL_ALWAYS", "SELECTIVE_REAP", "PIDFD"]
PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"


def hosts() -> list[str]:
    sys.path.insert(0, str(HERE))
    try:
        import cell  # type: ignore[import-not-found]  # noqa: PLC0415 - a script beside this test

        names: list[str] = list(cell.HOSTS)
        return names
    finally:
        sys.path.remove(str(HERE))


def expected(host: str, mode: str) -> str:
    """The contract, cell by cell."""
    if host == "asyncio FastChildWatcher":
        return "refused"  # it reaps every child with waitpid(-1): no mode can share a process with it
    if mode in ("LIBXL", "LIBXL_ALWAYS"):
        # They reap by waitpid(-1): fine alone, refused up front beside a host's children
        # (under uvloop: refused because libuv owns SIGCHLD).
        return "works" if host == "no children of its own" else "refused"
    return "works"


def run(host: str, mode: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "cell.py"), host, mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"host": host, "mode": mode, "outcome": "crashed", "detail": proc.stderr[-2000:]}
    return result


@pytest.fixture(scope="module")
def observed() -> dict[tuple[str, str], dict[str, Any]]:
    cells = [(h, m) for h in hosts() for m in MODES]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda hm: run(*hm), cells))
    return {(r["host"], r["mode"]): r for r in results}


@pytest.mark.timeout(600)
def test_every_cell_meets_the_contract(observed: dict[tuple[str, str], dict[str, Any]]) -> None:
    wrong = {
        f"{h} x {m}": f"{r['outcome']} (want {expected(h, m)}): {r['detail']}"
        for (h, m), r in observed.items()
        if r["outcome"] != expected(h, m)
    }
    assert not wrong, json.dumps(wrong, indent=2)


@pytest.mark.timeout(600)
def test_the_documented_matrix_is_what_the_code_does(observed: dict[tuple[str, str], dict[str, Any]]) -> None:
    table = {
        h: {m: {"outcome": r["outcome"], "detail": r["detail"]} for (hh, m), r in observed.items() if hh == h}
        for h in dict.fromkeys(h for h, _ in observed)
    }
    committed: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if os.environ.get("CHILDPROC_UPDATE_MATRIX"):
        committed[PYVER] = table
        RESULTS.write_text(json.dumps(dict(sorted(committed.items())), indent=2) + "\n")
    assert committed.get(PYVER) == table, (
        f"docs/coexistence.json does not match what Python {PYVER} does now; if the change is "
        "deliberate, rerun with CHILDPROC_UPDATE_MATRIX=1"
    )
