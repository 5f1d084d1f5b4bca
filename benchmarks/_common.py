"""What every benchmark shares: argument parsing, progress, JSON output, A/B runs.

Run a benchmark as a script from the repository root::

    python benchmarks/NAME.py [options]

(NAME: throughput, scaling, latency, bigparent, forkfaults, pathcost, phases, pipe_io.)

It prints a table and writes nothing, unless ``--json PATH`` says where to
write its results (``benchmarks/results/NAME.json`` holds the recorded runs the
docs are built from: write there only on purpose). Progress goes to stderr,
only when stderr is a terminal.

Run as a script, a benchmark imports this checkout's ``childproc`` (this module
puts the repository root on ``sys.path`` behind the script's own directory,
``benchmarks/``), before any installed one. The benchmarks use childproc's
public API only.

``--baseline SRC`` (throughput, scaling, latency) runs each childproc row A/B:
A is this checkout's childproc, B the one in ``SRC`` (a directory holding a
``childproc/`` package, e.g. ``git worktree add /tmp/base HEAD~3``), A' this
checkout's again (the A/A pair, whose spread is the machine's noise). Each
measurement runs in a child interpreter of its own (``sys.executable`` with
``PYTHONPATH`` set to the tree, running the benchmark module's ``measure``),
the three sides in a fresh random order each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Run as a script (python benchmarks/NAME.py), sys.path[0] is benchmarks/: this
# checkout's childproc goes right behind it. A measuring child of an A/B run
# (python -c) is left alone: its PYTHONPATH says which childproc it measures.
_SCRIPT = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else None
if _SCRIPT is not None and Path(_SCRIPT).resolve().parent == HERE and str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))


def parser(doc: str | None, name: str, baseline: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python benchmarks/{name}.py",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", metavar="PATH", help="write the results here as JSON (default: write nothing)")
    if baseline:
        p.add_argument(
            "--baseline",
            metavar="SRC",
            help="also run every childproc row with the childproc in SRC (a source tree holding a "
            "childproc/ package), A/B/A' interleaved in child interpreters; prints B/A and A/A",
        )
    return p


def progress(done: int, total: int, label: str) -> None:
    """A progress bar on stderr, only where stderr is a terminal."""
    if not sys.stderr.isatty():
        return
    bar = "#" * (30 * done // max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\r[{bar:<30}] {done}/{total} {label[:50]:<50}", end=end, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def medians(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {name: {key: median(values) for key, values in per.items()} for name, per in table.items()}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def pidfds_work() -> bool:
    """Whether this kernel and Python give pidfds (probed here, not asked of childproc)."""
    if not hasattr(os, "pidfd_open") or not hasattr(os, "P_PIDFD"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # ENOSYS on old kernels, EPERM under seccomp
        return False
    return True


def peak_rss_mib() -> int:
    """This process's resident high-water mark."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) // 1024


def plot_lines(
    path: str, title: str, xlabel: str, ylabel: str, series: dict[str, dict[float, float]]
) -> None:
    """A log-log line plot of ``series`` (name -> {x: y}) as a PNG. Needs the ``plot``
    extra (matplotlib); without it, says so and writes nothing."""
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("no plot: install the 'plot' extra (pip install childproc[plot])", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def write(path: str | None, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as strict JSON (no NaN) to ``path``; nothing without a path."""
    if path is None:
        return
    out = {"benchmark": name, "python": platform.python_version(), "kernel": platform.release(), **data}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"wrote {target}")


# -- A/B runs ------------------------------------------------------------------------------------
SIDES = ("A", "B", "A'")  # this checkout, the baseline, this checkout again

_MEASURE = """\
import json, os, sys
sys.path[0] = {here!r}  # (was '', the current directory: it could hold another childproc)
if {pythonpath!r} is None:
    os.environ.pop("PYTHONPATH", None)  # the children's environment as in the parent
else:
    os.environ["PYTHONPATH"] = {pythonpath!r}
import childproc, {module}
result = {module}.measure(json.loads(sys.argv[1]))
print(json.dumps({{"result": result, "childproc": childproc.__file__}}))
"""


def source_tree(src: str) -> Path:
    """``src`` as the root of a source tree holding a ``childproc`` package; exits if it is not one."""
    tree = Path(src).resolve()
    if not (tree / "childproc" / "__init__.py").is_file():
        sys.exit(f"--baseline {src}: no childproc/__init__.py there (give a checkout's source tree)")
    return tree


def measure_in(tree: Path, module: str, payload: Mapping[str, Any]) -> Any:
    """Run ``module.measure(payload)`` in a child interpreter importing childproc from
    ``tree``; return what it returned (a JSON value)."""
    pythonpath = os.environ.get("PYTHONPATH")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) if pythonpath is None else str(tree) + os.pathsep + pythonpath
    code = _MEASURE.format(here=str(HERE), pythonpath=pythonpath, module=module)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {module} {payload} with {tree} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(out["childproc"]).resolve().is_relative_to(tree):
        raise RuntimeError(f"the child measured {out['childproc']}, not the childproc in {tree}")
    return out["result"]


class ABRuns:
    """Figures of every (row, key) for the three sides A, B, A', and their ratios."""

    def __init__(self, baseline: Path) -> None:
        self.trees = {"A": ROOT, "B": baseline, "A'": ROOT}
        self.baseline = baseline
        self.values: dict[str, dict[str, dict[str, list[float]]]] = {}  # row -> key -> side+figure

    def round(self, module: str, row: str, key: str, payload: Mapping[str, Any], figures: list[str]) -> None:
        """One round of ``row`` at ``key``: each side once, in a fresh random order. The
        measuring entry returns a dict with every name in ``figures`` (smaller is better)."""
        sides = list(SIDES)
        random.shuffle(sides)
        got = {side: measure_in(self.trees[side], module, payload) for side in sides}
        per = self.values.setdefault(row, {}).setdefault(key, {})
        for side in SIDES:
            for figure in figures:
                per.setdefault(f"{side} {figure}", []).append(float(got[side][figure]))

    def ratios(self, figure: str) -> dict[str, dict[str, dict[str, float]]]:
        """row -> key -> {"B/A": median of B/A per round, "A/A": median of A'/A per round}."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for row, per_key in self.values.items():
            for key, v in per_key.items():
                a, b, a2 = v[f"A {figure}"], v[f"B {figure}"], v[f"A' {figure}"]
                out.setdefault(row, {})[key] = {
                    "B/A": statistics.median(y / x for x, y in zip(a, b, strict=True)),
                    "A/A": statistics.median(y / x for x, y in zip(a, a2, strict=True)),
                }
        return out

    def table(self, figure: str, what: str) -> None:
        ratios = self.ratios(figure)
        keys = list(dict.fromkeys(k for per in ratios.values() for k in per))
        print(f"\nA/B: {what}, B (baseline {self.baseline}) / A (this checkout), median of the rounds;")
        print(
            "in brackets A'/A, this checkout against itself: a difference inside its distance from 1 is noise"
        )
        header = f"{'row':<44}" + "".join(f"{k:>22}" for k in keys)
        print(header)
        print("-" * len(header))
        for row, per in ratios.items():
            cells = "".join(
                f"{per[k]['B/A']:>11.3f} [{per[k]['A/A']:.3f}]" if k in per else f"{'-':>22}" for k in keys
            )
            print(f"{row:<44}{cells}")

    def json(self, figures: list[str]) -> dict[str, Any]:
        return {
            "baseline": str(self.baseline),
            "current": str(ROOT),
            "order": "A (this checkout), B (baseline), A' (this checkout) in a random order each round, "
            "each in a child interpreter of its own",
            "ratio": "B/A and A'/A of each figure per round, median over the rounds (> 1: B or A' slower)",
            "ratios": {figure: self.ratios(figure) for figure in figures},
            "samples": self.values,
        }


def ab_main(
    baseline: str,
    module: str,
    plan: list[tuple[str, str, dict[str, Any]]],
    rounds: int,
    figures: list[str],
) -> ABRuns:
    """Run ``plan`` (row, key, payload for ``module.measure``) ``rounds`` times A/B/A'
    (see :class:`ABRuns`), rows interleaved within each round."""
    runs = ABRuns(source_tree(baseline))
    total, done = len(plan) * rounds, 0
    for _ in range(rounds):
        for row, key, payload in plan:
            runs.round(module, row, key, payload, figures)
            done += 1
            progress(done, total, f"A/B {key} {row}")
    return runs


async def pidfd_on_loop(loop: Any, argv: list[str], env: Mapping[str, str]) -> None:
    """The least an adapter on an asyncio loop can do for one child: ``posix_spawn``,
    its pidfd in ``loop.add_reader``, ``waitid`` and a future; no library, no checks.
    (The loop floors of ``throughput.py`` and ``pathcost.py``.)"""
    fd = os.pidfd_open(os.posix_spawn(argv[0], argv, env))
    exited = loop.create_future()

    def readable() -> None:
        loop.remove_reader(fd)
        os.waitid(os.P_PIDFD, fd, os.WEXITED)
        os.close(fd)
        exited.set_result(None)

    loop.add_reader(fd, readable)
    await exited
