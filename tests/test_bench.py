"""Every benchmark runs (tiny sizes) and writes its JSON: they must not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = {
    "throughput": ["--n", "10", "--rounds", "1"],
    "scaling": ["--ks", "5,10", "--kills", "3", "--rounds", "1"],
    "latency": ["--samples", "4"],
    "bigparent": ["--sizes-mib", "12,40", "--reps", "2", "--batch", "2"],
    "forkfaults": ["--rounds", "1", "--batch", "5"],
}


def _refuse(constant: str) -> object:
    raise ValueError(f"{constant} in the JSON: a figure with no measurement must be left out")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_runs_and_writes_json(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "childproc", "bench", name, *RUNS[name], "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text(), parse_constant=_refuse)  # strict JSON: no NaN or Infinity
    assert data["benchmark"] == name and data["python"]
    assert "wrote" in proc.stdout
