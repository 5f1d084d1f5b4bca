"""``pytest tests/torture`` runs a short torture in CI; ``--torture-long`` the long run;
``--torture-report`` writes the figures to benchmarks/results/torture.json (the docs render
it), which a plain test run leaves alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "torture.json"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torture-long",
        action="store_true",
        help="the long torture run (100,000 children) instead of the short CI one",
    )
    parser.addoption(
        "--torture-report",
        action="store_true",
        help="record the torture figures in benchmarks/results/torture.json (the docs render it)",
    )


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> int:
    """How many children the big cases run."""
    return 100_000 if request.config.getoption("--torture-long") else 2_500


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Any:
    """Record a case's figures into benchmarks/results/torture.json (the docs render it),
    with ``--torture-report`` only: a plain test run leaves the checkout as it was."""

    def record(**figures: object) -> None:
        if not request.config.getoption("--torture-report"):
            return
        data: dict[str, Any] = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        run = "long" if request.config.getoption("--torture-long") else "short"
        data.setdefault(run, {})[request.node.name] = figures
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        tmp = REPORT.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(REPORT)

    return record
