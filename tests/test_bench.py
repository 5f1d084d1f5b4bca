"""Every benchmark runs as a script (tiny sizes): it must not rot, must write only where
told, and must print no progress into a pipe."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"

RUNS = {
    "throughput": ["--n", "10", "--rounds", "1"],
    "scaling": ["--ks", "5,10", "--kills", "3", "--rounds", "1"],
    "latency": ["--samples", "4"],
    "bigparent": ["--sizes-mib", "12,40", "--reps", "2", "--batch", "2"],
    "forkfaults": ["--rounds", "1", "--batch", "5"],
    "pathcost": ["--n", "5", "--modes", "SELECTIVE_REAP", "--top", "2"],
    "pipe_io": ["--mib", "4", "--rounds", "1"],
    "phases": ["--n", "5", "--modes", "PIDFD"],
}
#: The run without --json only checks what is written and printed: the fewest rows.
LEAN = {
    **RUNS,
    "throughput": ["--n", "10", "--rounds", "1", "--only", "subprocess", "--kinds", "spawn", "--conc", "1"],
}
#: Counting needs sys.monitoring (3.12+); before, the benchmark says so and exits.
NEEDS_312 = {"pathcost"}


def _skip_before_312(name: str) -> None:
    if name in NEEDS_312 and sys.version_info < (3, 12):
        pytest.skip(f"{name} counts with sys.monitoring (Python 3.12+)")


def _refuse(constant: str) -> object:
    raise ValueError(f"{constant} in the JSON: a figure with no measurement must be left out")


def _strict_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(), parse_constant=_refuse)  # no NaN, Infinity
    return data


def _run(name: str, args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/NAME.py ARGS`` in ``cwd``, stdout and stderr pipes."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout and "\r" not in proc.stderr  # no progress bar into a pipe
    return proc


def _files_under(path: Path) -> dict[str, str]:
    """Every file under ``path``: relative name -> sha256 and mtime."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(path))] = f"{digest} {p.stat().st_mtime_ns}"
    return out


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_runs_and_writes_json_only_where_told(name: str, tmp_path: Path) -> None:
    _skip_before_312(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out" / f"{name}.json"
    proc = _run(name, [*RUNS[name], "--json", str(out)], cwd)
    data = _strict_json(out)
    assert data["benchmark"] == name and data["python"]
    assert f"wrote {out}" in proc.stdout
    assert not _files_under(cwd)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_without_json_writes_nothing(name: str, tmp_path: Path) -> None:
    _skip_before_312(name)
    results = _files_under(RESULTS)
    proc = _run(name, LEAN[name], tmp_path)
    assert not _files_under(tmp_path), "a benchmark wrote a file without --json"
    assert _files_under(RESULTS) == results, "benchmarks/results was touched"
    assert "wrote" not in proc.stdout
    assert proc.stdout.strip()  # the table


@pytest.mark.timeout(60)
def test_pathcost_counts_exactly_and_refuses_before_312(tmp_path: Path) -> None:
    """The counts are steady (the same code counted twice gives the same figures, but
    for a once-a-second check that a slow run may cross), the library's path is
    counted beyond the floor's, and before 3.12 the benchmark says what it needs
    instead of failing obscurely."""
    args = ["--n", "5", "--modes", "PIDFD", "--kinds", "spawn", "--top", "0"]
    if sys.version_info < (3, 12):
        proc = subprocess.run(
            [sys.executable, str(BENCHMARKS / "pathcost.py"), *args],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
            cwd=tmp_path,
        )
        assert proc.returncode == 2 and "Python 3.12" in proc.stderr, proc.stderr
        return
    figures = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        _run("pathcost", [*args, "--json", str(out)], tmp_path)
        figures.append(_strict_json(out)["rows"])
    for row in ("floor", "PIDFD"):
        a, b = (f[row]["spawn"]["instructions"] for f in figures)
        assert abs(a - b) <= 0.02 * a, (row, a, b)
    floor, pidfd = figures[0]["floor"]["spawn"], figures[0]["PIDFD"]["spawn"]
    assert 0 < floor["instructions"] < pidfd["instructions"]
    assert 0 < floor["calls"] < pidfd["calls"]


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 12), reason="counting needs sys.monitoring")
def test_pathcost_counts_the_asyncio_adapters_run_against_an_asyncio_floor(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--n", "5", "--modes", "PIDFD", "--kinds", "asyncio-run", "--top", "80"]
    _run("pathcost", [*args, "--json", str(out)], tmp_path)
    rows = _strict_json(out)["rows"]
    floor, adapter = rows["floor"]["asyncio-run"], rows["PIDFD"]["asyncio-run"]
    assert 500 < floor["instructions"] < adapter["instructions"]  # (the loop's own work is in both)
    assert any("asyncio_host" in name or "_run.py" in name for name, _ in adapter["top"])


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.version_info < (3, 12), reason="counting needs sys.monitoring")
def test_pathcost_ablate_prices_each_guarantee(tmp_path: Path) -> None:
    """Each ablation reaches the code it names (the count drops: a patch that missed
    its target, after a rename say, would leave it as it was), and all of them
    together drop it most."""
    out = tmp_path / "run.json"
    args = ["--n", "5", "--modes", "PIDFD", "--kinds", "spawn", "--top", "0", "--ablate"]
    _run("pathcost", [*args, "--json", str(out)], tmp_path)
    rows = {name: per["spawn"] for name, per in _strict_json(out)["rows"].items()}
    whole = rows.pop("PIDFD")
    together = rows.pop("PIDFD without all of these")
    del rows["floor"]
    assert len(rows) == 6, rows
    for name, got in rows.items():  # (wait4's price is a call, hardly an instruction)
        assert got["instructions"] < whole["instructions"] or got["calls"] < whole["calls"], (name, got)
        assert together["instructions"] < got["instructions"], (name, got)


@pytest.mark.timeout(200)
def test_throughput_adapters_beside_their_hosts_and_the_loops_floors(tmp_path: Path) -> None:
    """``--only`` runs just the rows named, and each adapter gets its throughput
    over its host's API beside the host loop's own no-library floor's."""
    pytest.importorskip("trio")
    pytest.importorskip("anyio")
    if not hasattr(os, "pidfd_open"):
        pytest.skip("the loop floors watch pidfds")
    out = tmp_path / "t.json"
    args = ["--n", "6", "--rounds", "1", "--kinds", "spawn", "--only", "asyncio,trio,anyio"]
    _run("throughput", [*args, "--json", str(out)], tmp_path)
    data = _strict_json(out)
    rows = set(data["ratio_to_floor"])
    floors = {f"{loop} pidfd floor (no library)" for loop in ("asyncio", "trio", "anyio")}
    assert floors | {"anyio run_process (asyncio)"} <= rows
    assert not any("SELECTIVE_REAP" in row or "spawnProcess" in row for row in rows)
    versus = data["adapter_and_loop_floor_over_host_api"]
    assert {
        "childproc asyncio_host run",
        "childproc trio_host run",
        "childproc anyio_host run (asyncio)",
    } <= set(versus)
    for per in versus.values():
        for figures in per.values():
            assert figures["adapter"] > 0 and figures["floor"] > 0


@pytest.mark.timeout(120)
def test_throughput_promise_floor_reaps_every_child_and_closes_every_fd(throughput: ModuleType) -> None:
    """The row that prices the promise with no structure: for spawn and fork, at
    both concurrencies, it starts and reaps every child (a lost one would hang it
    past the timeout), leaves no child and no fd behind, and refuses to run where
    SIGCHLD's disposition discards statuses, as childproc does at every start."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("the promise floor is a pidfd floor")
    fds = sorted(os.listdir("/proc/self/fd"))
    for kind in ("spawn", "fork"):
        for conc in (1, 8):
            throughput.promise_floor(kind)(12, conc)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    assert sorted(os.listdir("/proc/self/fd")) == fds
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(RuntimeError, match="SIGCHLD ignored"):
            throughput.promise_floor("spawn")(1, 1)
    finally:
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.timeout(200)
def test_throughput_baseline_ab_against_the_current_tree(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    args = ["--baseline", str(ROOT), "--n", "4", "--rounds", "2", "--kinds", "spawn", "--conc", "1"]
    proc = _run("throughput", [*args, "--json", str(out)], tmp_path)
    data = _strict_json(out)
    assert data["baseline"] == str(ROOT) and data["current"] == str(ROOT)
    ratios = data["ratios"]
    for figure in ("wall", "cpu"):
        rows = ratios[figure]
        assert set(rows) >= {"childproc SELECTIVE_REAP", "childproc PIDFD", "childproc MAINLOOP"}, rows
        for per in rows.values():
            ab = per["spawn c=1"]
            assert set(ab) == {"B/A", "A/A"}
            assert all(math.isfinite(v) and v > 0 for v in ab.values()), ab
    samples = data["samples"]
    assert len(samples["childproc PIDFD"]["spawn c=1"]["B wall"]) == 2  # one per round
    assert "B/A" in proc.stdout or "A/B" in proc.stdout


@pytest.mark.timeout(60)
def test_baseline_must_be_a_source_tree(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "throughput.py"), "--baseline", str(tmp_path), "--n", "1"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "childproc/__init__.py" in proc.stderr, proc.stderr[-3000:]
    assert not _files_under(tmp_path)


@pytest.fixture
def throughput(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """benchmarks/throughput.py, imported in this process."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("throughput")


def _may_run_realtime() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60, check=False)
    return proc.returncode == 0


@pytest.mark.timeout(200)
def test_throughput_realtime_measures_floors_and_modes_at_sched_rr(tmp_path: Path) -> None:
    out = tmp_path / "out" / "rt.json"
    args = ["--n", "10", "--rounds", "1", "--kinds", "spawn", "--realtime", "--json", str(out)]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "throughput.py"), *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        cwd=cwd,
    )
    if not _may_run_realtime():  # no CAP_SYS_NICE here: the refusal must say what is needed
        assert proc.returncode == 2 and "CAP_SYS_NICE" in proc.stderr, proc.stderr[-3000:]
        assert not out.exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _strict_json(out)
    assert data["main_thread"] == "SCHED_RR"
    names = set(data["ratio_to_floor"])
    assert "childproc SELECTIVE_REAP" in names and "raw floor (A/A)" in names
    assert not any(n.startswith(("asyncio", "trio", "Twisted", "Tornado")) for n in names), names
    assert "main thread SCHED_RR" in proc.stdout
    assert not _files_under(cwd)


@pytest.mark.timeout(120)
def test_throughput_realtime_puts_the_threads_policy_back(tmp_path: Path, throughput: ModuleType) -> None:
    if not _may_run_realtime():
        pytest.skip("this process may not run SCHED_RR (no CAP_SYS_NICE, ulimit -r 0)")

    def policy() -> tuple[int, object]:  # (without CAP_SYS_NICE, SCHED_RESET_ON_FORK may stay set)
        return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0)

    before = policy()
    args = ["--realtime", "--n", "2", "--rounds", "1", "--kinds", "spawn", "--conc", "1"]
    assert throughput.main([*args, "--json", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["main_thread"] == "SCHED_RR"
    assert policy() == before


@pytest.mark.timeout(60)
def test_realtime_thread_keeps_reset_on_fork_where_it_may_not_clear_it(
    monkeypatch: pytest.MonkeyPatch, throughput: ModuleType
) -> None:
    # Without CAP_SYS_NICE (ulimit -r), a thread may set SCHED_RESET_ON_FORK but not clear it.
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


@pytest.mark.timeout(60)
def test_throughput_realtime_refused_says_what_it_needs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    throughput: ModuleType,
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--realtime", "--n", "1", "--rounds", "1", "--json", str(tmp_path / "x.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--realtime" in err and "CAP_SYS_NICE" in err and "ulimit -r" in err
    assert not (tmp_path / "x.json").exists()
