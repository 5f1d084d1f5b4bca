"""What every benchmark shares: argument parsing, a progress bar, JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks") / "results"


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m childproc bench {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", default=str(RESULTS / f"{name}.json"), help="where to write the results")
    return p


def progress(done: int, total: int, label: str) -> None:
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


def write(path: str, name: str, data: dict[str, Any]) -> None:
    out = {"benchmark": name, "python": platform.python_version(), "kernel": platform.release(), **data}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")
