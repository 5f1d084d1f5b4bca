"""Every benchmark runs (tiny sizes) and writes its JSON: they must not rot."""

from __future__ import annotations

import errno
import json
import os
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


def _may_run_realtime() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60, check=False)
    return proc.returncode == 0


@pytest.mark.timeout(300)
def test_throughput_realtime_measures_floors_and_modes_at_sched_rr(tmp_path: Path) -> None:
    args = ["--n", "10", "--rounds", "1", "--kinds", "spawn", "--realtime"]  # default --json
    proc = subprocess.run(
        [sys.executable, "-m", "childproc", "bench", "throughput", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    out = tmp_path / "benchmarks" / "results" / "throughput-realtime.json"
    if not _may_run_realtime():  # no CAP_SYS_NICE here: the refusal must say what is needed
        assert proc.returncode == 2 and "CAP_SYS_NICE" in proc.stderr, proc.stderr[-3000:]
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text(), parse_constant=_refuse)
    assert data["main_thread"] == "SCHED_RR"
    names = set(data["ratio_to_floor"])
    assert "childproc SELECTIVE_REAP" in names and "raw floor (A/A)" in names
    assert not any(n.startswith(("asyncio", "trio", "Twisted", "Tornado")) for n in names), names
    assert "main thread SCHED_RR" in proc.stdout
    assert not (tmp_path / "benchmarks" / "results" / "throughput.json").exists()  # the ordinary run's


@pytest.mark.timeout(120)
def test_throughput_realtime_puts_the_threads_policy_back(tmp_path: Path) -> None:
    from childproc.bench import throughput  # noqa: PLC0415

    if not _may_run_realtime():
        pytest.skip("this process may not run SCHED_RR (no CAP_SYS_NICE, ulimit -r 0)")

    def policy() -> tuple[int, object]:  # (without CAP_SYS_NICE, SCHED_RESET_ON_FORK may stay set)
        return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0)

    before = policy()
    args = ["--realtime", "--n", "2", "--rounds", "1", "--kinds", "spawn", "--conc", "1"]
    assert throughput.main([*args, "--json", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["main_thread"] == "SCHED_RR"
    assert policy() == before


def test_realtime_thread_keeps_reset_on_fork_where_it_may_not_clear_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without CAP_SYS_NICE (ulimit -r), a thread may set SCHED_RESET_ON_FORK but not clear it.
    from childproc.bench import throughput  # noqa: PLC0415

    asked: list[int] = []

    def setscheduler(pid: int, policy: int, param: object) -> None:
        asked.append(policy)
        if len(asked) == 2:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(0))
    monkeypatch.setattr(os, "sched_setscheduler", setscheduler)
    throughput.realtime_thread()()
    reset = os.SCHED_RESET_ON_FORK
    assert asked == [os.SCHED_RR | reset, os.SCHED_OTHER, os.SCHED_OTHER | reset]


def test_throughput_realtime_refused_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from childproc.bench import throughput  # noqa: PLC0415

    def refuse(*args: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--realtime", "--n", "1", "--rounds", "1", "--json", str(tmp_path / "x.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--realtime" in err and "CAP_SYS_NICE" in err and "ulimit -r" in err
    assert not (tmp_path / "x.json").exists()
