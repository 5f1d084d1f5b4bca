"""Sphinx configuration for the childproc documentation.

The mode tables in ``modes.rst`` and the watcher table in ``watchers.rst`` and
``design.rst`` are not written by hand: :func:`write_generated` renders them
from ``childproc._policy`` into ``docs/_generated/`` every time the site is
built, and the pages ``.. include::`` them. Change the policy table and the
docs follow. The lifecycle table and diagram in ``design.rst`` are rendered
the same way from ``childproc._lifecycle.TRANSITIONS`` (:func:`lifecycle_page`).

The "Measured cost" table in ``watchers.rst`` is rendered the same way from
``benchmarks/results/scaling.json`` (written by ``python benchmarks/scaling.py --json``)
when that file exists, and is a note saying how to fill it otherwise. Set
``CHILDPROC_SCALING_JSON`` to build from another results file.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import childproc  # noqa: E402
from childproc import _lifecycle, _policy  # noqa: E402

# -- project ------------------------------------------------------------------
project = "childproc"
author = "childproc developers"
copyright = "childproc developers"
release = childproc.__version__
version = ".".join(release.split(".")[:2])

# -- general ------------------------------------------------------------------
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "_generated"]  # _generated holds include files, not pages
default_role = "literal"
primary_domain = "py"
highlight_language = "python3"

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True


def _alias(value: object) -> str:
    """``Callable[[Child, ChildEvent], object]``: the alias without module paths or quotes."""
    return re.sub(r"\b(?:[a-z_]\w*\.)+(?=[A-Za-z_])", "", str(value)).replace("'", "")


# ``|alias-of-ChildCallback|`` and friends, so api.rst shows what the aliases really are.
rst_epilog = "\n".join(
    f".. |alias-of-{name}| replace:: ``{_alias(getattr(childproc, name))}``"
    for name in ("ChildCallback", "EventCallback", "ForkReplacement", "ReapedCallback")
)

# -- HTML ---------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"childproc {release}"
html_theme_options = {
    "description": "Fork from a library while the host forks too.",
    "fixed_sidebar": True,
}


# -- generated tables ---------------------------------------------------------
GENERATED = DOCS / "_generated"
SCALING_JSON = Path(os.environ.get("CHILDPROC_SCALING_JSON", DOCS.parent / "benchmarks/results/scaling.json"))


def _text(value: str) -> str:
    """``value`` as plain reST text: every character reST could take for markup is escaped."""
    out: list[str] = []
    for char in value:
        if char in "\\*`|_[]<>:":
            out.append("\\")
        out.append(char)
    return "".join(out)


def _mode(mode: _policy.SigchldOwner) -> str:
    return f":attr:`~childproc.SigchldOwner.{mode.name}`"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _list_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]], widths: str) -> str:
    if len(widths.split()) != len(header):
        raise ValueError(f"table {title!r}: {len(header)} columns but widths {widths!r}")
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        first, *rest = row
        lines.append(f"   * - {first}")
        lines.extend(f"     - {cell}" for cell in rest)
    return "\n".join(lines) + "\n"


def _watcher(kind: _policy.WatcherKind) -> str:
    return f"``{kind.name}``: {_text(kind.value)}"


def _watcher_of(mode: _policy.SigchldOwner, pidfds_usable: bool) -> _policy.WatcherKind | None:
    """The watcher ``mode`` uses, or None where the mode refuses to run (no pidfds for PIDFD)."""
    if not pidfds_usable and _policy.RULES[mode].requires_pidfds:
        return None
    return _policy.choose_watcher(mode, pidfds_usable)


def _watcher_cell(mode: _policy.SigchldOwner, pidfds_usable: bool) -> str:
    kind = _watcher_of(mode, pidfds_usable)
    if kind is None:
        return "none: ``setmode()`` raises :class:`~childproc.PidfdUnavailableError`"
    return _watcher(kind)


def mode_rules_table() -> str:
    """One column per mode, one row per field of :class:`childproc._policy.ModeRules`."""
    modes = list(_policy.RULES)
    rules = [_policy.RULES[m] for m in modes]
    rows: list[list[str]] = [
        ["Use it for", *(_text(r.use_when) for r in rules)],
        ["SIGCHLD handler installed", *(_text(r.handler.value) for r in rules)],
        ["Who reaps", *(_text(r.reaper.value) for r in rules)],
        ["Watcher (pidfds available)", *(_watcher_cell(m, pidfds_usable=True) for m in modes)],
        ["Watcher (no pidfds)", *(_watcher_cell(m, pidfds_usable=False) for m in modes)],
        ["Application reports deaths", *(_yes_no(r.app_reports) for r in rules)],
        ["Takes ``Hooks.reaped_callback``", *(_yes_no(r.takes_reaped_callback) for r in rules)],
        ["Each child's pidfd wakes ``fileno()``", *(_yes_no(r.pidfd_wakeups) for r in rules)],
        ["Stop/continue events (``events=``)", *(_yes_no(r.stop_events) for r in rules)],
        ["``reap_after_callback``", *(_yes_no(r.deferred_reap) for r in rules)],
        ["Needs pidfds", *(_yes_no(r.requires_pidfds) for r in rules)],
        [
            "A process-group tree makes the process a subreaper",
            *(_yes_no(r.orphans_come_back) for r in rules),
        ],
    ]
    refuses = [getattr(r, "refuses_foreign_children", None) for r in rules]
    if all(isinstance(flag, bool) for flag in refuses):
        rows.append(
            ["Refuses its first child beside children no context made", *(_yes_no(bool(f)) for f in refuses)]
        )
    rows.append(["The application promises", *(_text(r.app_promise) for r in rules)])
    header = ["Rule", *(_mode(m) for m in modes)]
    first = 15
    rest = (100 - first) // len(modes)
    widths = " ".join(str(w) for w in [first, *([rest] * len(modes))])
    return _list_table("What each mode promises and demands", header, rows, widths)


def route_table() -> str:
    """One row per entry of :data:`childproc._policy.ROUTE`, in the table's own order."""
    users: dict[_policy.Reaper, list[str]] = {}
    for mode, rules in _policy.RULES.items():
        users.setdefault(rules.reaper, []).append(_mode(mode))
    rows: list[list[str]] = []
    for (reaper, owner, has_callback), dest in _policy.ROUTE.items():
        other = _policy.ROUTE.get((reaper, owner, not has_callback))
        if other is dest and has_callback is False:
            continue  # shown once, as "either", on the row with has_callback=True
        if not any(r.takes_reaped_callback for r in _policy.RULES.values() if r.reaper is reaper):
            callback = "not accepted"
        else:
            callback = "either" if other is dest else _yes_no(has_callback)
        modes = ", ".join(users.get(reaper, [])) or "(no mode)"
        rows.append([_text(reaper.value), modes, _text(owner.value), callback, _text(dest.value)])
    header = [
        "Who reaped (or reported) it",
        "Modes",
        "Whose pid it is",
        "``reaped_callback`` given",
        "Goes to",
    ]
    return _list_table('Where a reaped pid goes ("the route")', header, rows, "24 18 18 12 28")


def watcher_table() -> str:
    """Which watcher each mode uses, with and without pidfds."""
    rows: list[list[str]] = []
    for kind in _policy.WatcherKind:
        used_by: list[str] = []
        for mode in _policy.RULES:
            with_fds = _watcher_of(mode, pidfds_usable=True) is kind
            without = _watcher_of(mode, pidfds_usable=False) is kind
            if with_fds and (without or _policy.RULES[mode].requires_pidfds):
                used_by.append(_mode(mode))  # every setting the mode runs in
            elif with_fds or without:
                used_by.append(f"{_mode(mode)} ({'with' if with_fds else 'without'} pidfds)")
        rows.append([f"``{kind.name}``", _text(kind.value), ", ".join(used_by) or "(no mode)"])
    return _list_table(
        "Which watcher reaps for which mode", ["Watcher", "Mechanism", "Used by"], rows, "14 43 43"
    )


def _seconds(value: object) -> float | None:
    """A median from the JSON as seconds, or None if it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _not_yet(command: str) -> str:
    """What a page says where its benchmark has no recorded run: the command that makes one
    (then rebuild the docs)."""
    return f".. note::\n\n   No measurements yet: run ``{command}`` (then rebuild the docs).\n"


def _shown(path: Path) -> str:
    """``path`` relative to the source tree where it is inside it."""
    try:
        return str(path.resolve().relative_to(DOCS.parent))
    except ValueError:
        return str(path)


def scaling_table(data: Mapping[str, object], source: str = "benchmarks/results/scaling.json") -> str:
    """The "Measured cost" table from ``benchmarks/scaling.py``'s JSON.

    The format (see ``benchmarks/scaling.py``): ``"ks"`` is the list of K,
    ``"median"`` maps each strategy to ``{str(K): seconds of CPU per reaped child}``.
    One row per strategy, one column per K (µs), and the ratio of the last K's
    cost to the first's.
    """
    ks = data.get("ks")
    medians = data.get("median")
    if not isinstance(ks, list) or not ks or not all(isinstance(k, int) for k in ks):
        raise ValueError('"ks" must be a non-empty list of ints')
    if not isinstance(medians, dict) or not medians:
        raise ValueError('"median" must map each strategy to {K: seconds}')
    first, last = ks[0], ks[-1]
    rows: list[list[str]] = []
    for strategy, per_k in medians.items():
        per: Mapping[str, object] = per_k if isinstance(per_k, dict) else {}
        cells = []
        for k in ks:
            value = _seconds(per.get(str(k)))
            cells.append("n/a" if value is None else f"{value * 1e6:,.1f}")
        lo, hi = _seconds(per.get(str(first))), _seconds(per.get(str(last)))
        ratio = "n/a" if lo is None or hi is None or lo <= 0 else f"{hi / lo:.2f}\N{MULTIPLICATION SIGN}"
        rows.append([_text(str(strategy)), *cells, ratio])
    header = ["Strategy", *(f"K = {k:,}" for k in ks), f"K {last:,} / K {first:,}"]
    width = 55 // (len(ks) + 1)
    widths = " ".join(str(w) for w in [100 - width * (len(ks) + 1), *([width] * (len(ks) + 1))])
    facts = [
        f"{key} {_text(str(data[key]))}" for key in ("kernel", "python") if isinstance(data.get(key), str)
    ]
    kills, rounds = data.get("kills_per_run"), data.get("rounds")
    if isinstance(kills, int) and isinstance(rounds, int):
        facts.append(f"up to {kills} kills per run, median of {rounds} round{'s' if rounds != 1 else ''}")
    intro = (
        "CPU time per reaped child, in microseconds, while *K* children stay alive "
        f"(from ``{source}``{': ' + ', '.join(facts) if facts else ''}).\n\n"
    )
    return intro + _list_table("Measured CPU cost per reaped child (µs)", header, rows, widths)


def scaling_page(path: Path) -> str:
    """The text of ``_generated/scaling.rst``: the table, or how to get one."""
    if not path.is_file():
        return _not_yet("python benchmarks/scaling.py --json benchmarks/results/scaling.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return scaling_table(data, _shown(path))


BIGPARENT_JSON = DOCS.parent / "benchmarks" / "results" / "bigparent.json"


def bigparent_page(path: Path) -> str:
    """The big-parent table (benchmarks/bigparent.py), or how to get one."""
    if not path.is_file():
        return _not_yet("python benchmarks/bigparent.py --json benchmarks/results/bigparent.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    sizes = [int(s) for s in data["sizes_mib"]]
    rows = []
    for name, per in data["median"].items():
        cells = [f"{per[str(s)] * 1e3:.2f}" for s in sizes]
        rows.append([_text(name), *cells, f"{per[str(sizes[-1])] / per[str(sizes[0])]:.2f}x"])
    widths = " ".join(["30"] + ["14"] * len(sizes) + ["12"])
    table = _list_table(
        f"ms per child (spawn + exit + reap), median of {data['reps']} rounds"
        f"{' of ' + str(data['batch']) + ' children each' if 'batch' in data else ''}, "
        f"Python {data['python']}, Linux {data['kernel']}",
        ["Strategy", *(f"{s} MiB parent" for s in sizes), "largest / smallest"],
        rows,
        widths,
    )
    fork, served, spawn = (
        data["median"][k][str(sizes[-1])] for k in ("os.fork", "forkserver fork", "forkserver spawn")
    )
    text = (
        f"{table}\nFrom the {sizes[-1]} MiB parent, the fork server's Python fork is "
        f"{fork / served:.0f}x and its exec path {fork / spawn:.0f}x faster than ``os.fork()``."
    )
    fresh = data["median"].get("fresh forkserver fork")
    if fresh:
        text += f" A fresh server's Python fork is {fork / fresh[str(sizes[-1])]:.0f}x faster"
        fresh_spawn = data["median"].get("fresh forkserver spawn")
        if fresh_spawn:
            text += f", its exec path {fork / fresh_spawn[str(sizes[-1])]:.0f}x"
        text += "."
    minimal = data["median"].get("minimal fork server (reference)")
    if minimal:
        text += (
            f" The reference, the least any fork server written in Python costs here, is "
            f"{fork / minimal[str(sizes[-1])]:.0f}x."
        )
    return text + "\n"


FORKFAULTS_JSON = DOCS.parent / "benchmarks" / "results" / "forkfaults.json"


def forkfaults_page(path: Path) -> str:
    """Page faults per fork through each fork server (benchmarks/forkfaults.py)."""
    if not path.is_file():
        return _not_yet("python benchmarks/forkfaults.py --json benchmarks/results/forkfaults.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        [
            _text(name),
            f"{s['server_faults_per_child']:.0f}",
            f"{s['child_faults_per_child']:.0f}",
            f"{s['seconds_per_child'] * 1e3:.3f}",
            f"{s['ratio_to_reference']:.2f}x",
        ]
        for name, s in data["servers"].items()
    ]
    return _list_table(
        f"Per child, {data['rounds']} rounds of {data['batch']} children through each server, "
        f"Python {data['python']}, Linux {data['kernel']}",
        ["Server", "faults in the server", "faults in the child", "ms per child", "time / reference"],
        rows,
        "30 14 14 12 14",
    )


THROUGHPUT_JSON = DOCS.parent / "benchmarks" / "results" / "throughput.json"
THROUGHPUT_REALTIME_JSON = DOCS.parent / "benchmarks" / "results" / "throughput-realtime.json"
THROUGHPUT_ADAPTERS_JSON = DOCS.parent / "benchmarks" / "results" / "throughput-adapters.json"
LATENCY_JSON = DOCS.parent / "benchmarks" / "results" / "latency.json"


def throughput_page(
    path: Path, command: str = "python benchmarks/throughput.py --json benchmarks/results/throughput.json"
) -> str:
    """Throughput relative to the raw floor (benchmarks/throughput.py)."""
    if not path.is_file():
        return _not_yet(command)
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = data["keys"]
    floor = data["children_per_second"]["raw floor"]
    quartiles = data.get("ratio_quartiles", {})
    rows = [["raw floor (children per second)", *(f"{floor[k]:.0f}/s" for k in keys)]]
    cpu_rows = []
    for name, per in data["ratio_to_floor"].items():
        q = quartiles.get(name, {})
        rows.append(
            [
                _text(name),
                *(
                    (f"{per[k]:.3f} ({q[k][0]:.3f}-{q[k][1]:.3f})" if k in q else f"{per[k]:.3f}")
                    if k in per
                    else "-"
                    for k in keys
                ),
            ]
        )
        cpu = data.get("cpu_ratio_to_floor", {}).get(name, {})
        if cpu:
            cpu_rows.append([_text(name), *(f"{cpu[k]:.3f}" if k in cpu else "-" for k in keys)])
    widths = " ".join(["30"] + ["17"] * len(keys))
    title = (
        f"Throughput relative to the raw floor (1.000 = no overhead), {data['n']} children per run, "
        f"median (quartiles) of {data['rounds']} rounds, Python {data['python']}"
        + (", main thread at real-time priority (SCHED_RR)" if data.get("main_thread") == "SCHED_RR" else "")
    )
    page = _list_table(title, ["Contender", *keys], rows, widths)
    if cpu_rows:
        page += "\n" + _list_table(
            "CPU per child (process and children), the floor's relative to the contender's",
            ["Contender", *keys],
            cpu_rows,
            widths,
        )
    faults = data.get("parent_minor_faults_per_child", {})
    if faults:
        fault_rows = []
        for name, per in faults.items():
            fault_rows.append([_text(name), *(f"{per[k]:.0f}" if k in per else "-" for k in keys)])
        page += "\n" + _list_table(
            "Page faults per child in the benchmark's process (minor, median)",
            ["Contender", *keys],
            fault_rows,
            widths,
        )
    on_cpu = data.get("main_thread_on_cpu_us_per_child", {})
    waiting = data.get("main_thread_waiting_for_cpu_us_per_child", {})
    if on_cpu:
        thread_rows = [
            [_text(name), *(f"{per[k]:.0f} / {waiting[name][k]:.0f}" if k in per else "-" for k in keys)]
            for name, per in on_cpu.items()
        ]
        page += "\n" + _list_table(
            "The main thread per child, µs (median): on a CPU / runnable but waiting for one",
            ["Contender", *keys],
            thread_rows,
            widths,
        )
    return page


def _versus(cell: Mapping[str, float]) -> str:
    return f"{cell['adapter']:.2f} ({cell['floor']:.2f})"


PATHCOST_ABLATE_JSON = DOCS.parent / "benchmarks" / "results" / "pathcost-ablate.json"


def ablate_page(path: Path) -> str:
    """The price of each guarantee on the per-child path (``pathcost.py --ablate``)."""
    if not path.is_file():
        return _not_yet(
            "python benchmarks/pathcost.py --modes PIDFD --kinds spawn --ablate "
            "--json benchmarks/results/pathcost-ablate.json"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    rows_in = {name: per["spawn"] for name, per in data["rows"].items()}
    floor, whole = rows_in["floor"]["instructions"], rows_in["PIDFD"]["instructions"]
    rows = []
    for name, got in rows_in.items():
        saved = "" if name in ("floor", "PIDFD") else f"{whole - got['instructions']:.0f}"
        rows.append([_text(name), f"{got['instructions']:.0f}", f"{got['calls']:.0f}", saved])
    left = rows_in["PIDFD without all of these"]["instructions"] - floor
    return _list_table(
        f"Instructions and calls per child, spawn and wait one at a time ({data['n']} children "
        f"per row, Python {data['python']}); with every guarantee off, {left:.0f} instructions "
        "beyond the floor are left",
        ["Row", "Instructions", "Calls", "Saved"],
        rows,
        "52 16 16 16",
    )


def adapters_page(path: Path) -> str:
    """Each adapter's throughput over its host's own API, beside its loop's floor's
    (benchmarks/throughput.py, the adapter rows)."""
    command = (
        'python benchmarks/throughput.py --kinds spawn --only "asyncio,trio,Twisted,anyio" '
        "--json benchmarks/results/throughput-adapters.json"
    )
    if not path.is_file():
        return _not_yet(command)
    data = json.loads(path.read_text(encoding="utf-8"))
    versus = data.get("adapter_and_loop_floor_over_host_api", {})
    keys = [k for k in data["keys"] if any(k in per for per in versus.values())]
    rows = [
        [
            _text(name),
            *(f"{per[k]['adapter']:.2f} ({per[k]['floor']:.2f})" if k in per else "-" for k in keys),
        ]
        for name, per in versus.items()
    ]
    title = (
        "Each adapter's throughput over its host's own API (in brackets: the host loop's no-library floor's, "
        f"the most an adapter on that loop can reach), {data['n']} children per run, median of "
        f"{data['rounds']} rounds, Python {data['python']}"
    )
    return _list_table(title, ["Adapter", *keys], rows, " ".join(["30"] + ["22"] * len(keys)))


def latency_page(path: Path) -> str:
    """Exit-to-callback latency (benchmarks/latency.py)."""
    if not path.is_file():
        return _not_yet("python benchmarks/latency.py --json benchmarks/results/latency.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for scenario, s in data["seconds"].items():
        cells = [f"{s[k] * 1e6:.0f}" for k in ("floor_p50", "floor_p99", "p50", "p99")]
        rows.append([scenario, *cells, f"{s['p99'] / s['floor_p99']:.2f}x"])
    header = ["Scenario", "floor p50 (µs)", "floor p99 (µs)", "p50 (µs)", "p99 (µs)", "p99 / floor p99"]
    title = f"Child exit to callback, {data['mode']}, {data['samples']} samples, Python {data['python']}"
    return _list_table(title, header, rows, "16 14 14 14 14 16")


TORTURE_JSON = DOCS.parent / "benchmarks" / "results" / "torture.json"
_TORTURE_COLUMNS = ("children", "lost", "duplicated", "wrong", "zombies", "fd_growth", "sigchld_restored")


def torture_page(path: Path) -> str:
    """The torture suite's figures (tests/torture writes them), one table per run length."""
    if not path.is_file():
        return ".. note::\n\n   No figures yet: run ``python -m pytest tests/torture``.\n"
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for run in sorted(data):
        rows = []
        for case, figures in sorted(data[run].items()):
            extra = ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in figures.items() if k not in _TORTURE_COLUMNS
            )
            cells = [str(figures.get(c, "")) for c in _TORTURE_COLUMNS]
            rows.append([_text(case.removeprefix("test_").replace("_", " ")), *cells, _text(extra)])
        header = [
            "Case",
            "children",
            "lost",
            "dup.",
            "wrong",
            "zombies",
            "fd growth",
            "SIGCHLD restored",
            "also",
        ]
        out.append(_list_table(f"The {run} run", header, rows, "22 8 6 6 6 7 7 9 29"))
    return "\n".join(out)


COEXISTENCE_JSON = DOCS / "coexistence.json"
_OUTCOME = {"works": "works", "refused": "refused", "broken": "**BROKEN**", "crashed": "**CRASHED**"}


def coexistence_table(path: Path) -> str:
    """The coexistence matrix, from the results the test suite checks (tests/coexistence)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    versions = sorted(data, key=lambda v: tuple(int(x) for x in v.split(".")))
    modes = [m.name for m in _policy.SigchldOwner]
    hosts = list(dict.fromkeys(h for v in versions for h in data[v]))
    rows = []
    reasons: dict[str, int] = {}
    for host in hosts:
        cells = []
        for mode in modes:
            seen = {}
            for v in versions:
                cell = data[v].get(host, {}).get(mode)
                if cell is not None:
                    seen[v] = cell
            outcomes = {c["outcome"] for c in seen.values()}
            text = " / ".join(_OUTCOME.get(o, o) for o in sorted(outcomes))
            details = sorted({c["detail"] for c in seen.values() if c["detail"]})
            for detail in details:
                number = reasons.setdefault(detail, len(reasons) + 1)
                text += f" [{number}]"
            cells.append(text)
        present = [v for v in versions if host in data[v]]
        label = host if present == versions else f"{host} (Python {', '.join(present)})"
        rows.append([_text(label), *cells])
    widths = " ".join(["24"] + [str(76 // len(modes))] * len(modes))
    table = _list_table(
        f"Host x mode, Python {', '.join(versions)}", ["Host", *(f"``{m}``" for m in modes)], rows, widths
    )
    notes = "\n".join(f"{n}. {_text(d)}." for d, n in reasons.items())
    return f"{table}\n{notes}\n"


_PHASE_SETS = {
    "OUTSTANDING": "exit not delivered yet, child not given up: what ``Context.children`` lists",
    "SIGNALLABLE": "not reaped and exit not seen: signals may go to its pid",
    "UNREAPED": "not reaped by anyone yet: its pid is still reserved",
    "FINISHED": "nothing more will be reported",
}


def lifecycle_page() -> str:
    """The child lifecycle from :data:`childproc._lifecycle.TRANSITIONS`: a table of every
    move, a text diagram of each state's outgoing arrows, and the named sets of states."""
    transitions = _lifecycle.TRANSITIONS
    phases = list(_lifecycle.Phase)
    moves = list(_lifecycle.Move)
    for phase, move in transitions:  # the table speaks only of known states and moves
        if phase not in phases or move not in moves:
            raise ValueError(f"TRANSITIONS names {phase!r} --{move!r}--> outside Phase/Move")
    order = {(p, m): (phases.index(p), moves.index(m)) for p, m in transitions}
    ordered = sorted(transitions, key=order.__getitem__)

    states = _list_table(
        "The states of a child (``childproc._lifecycle.Phase``)",
        ["State", "Meaning"],
        [[f"``{p.name}``", _text(p.value)] for p in phases],
        "20 80",
    )
    move_table = _list_table(
        "What moves a child (``childproc._lifecycle.Move``)",
        ["Move", "What happened"],
        [[f"``{m.name.lower()}``", _text(m.value)] for m in moves],
        "20 80",
    )
    rows = []
    for phase, move in ordered:
        target = transitions[(phase, move)]
        note = "no change" if target is phase else ""
        rows.append([f"``{phase.name}``", f"``{move.name.lower()}``", f"``{target.name}``", note])
    table = _list_table(
        f"Every legal move ({len(transitions)}); anything else raises ``IllegalMove``",
        ["From", "Move", "To", "Note"],
        rows,
        "22 18 22 38",
    )

    width = max(len(p.name) for p in phases)
    diagram = ["::", ""]
    for phase in phases:
        arrows = [(m, transitions[(phase, m)]) for m in moves if (phase, m) in transitions]
        if not arrows:
            diagram.append(f"    {phase.name:<{width}}  (no move out)")
        label = max(len(m.name) for m, _ in arrows) if arrows else 0
        for move, target in arrows:
            arrow = f"--{move.name.lower()}-->".ljust(label + 5)
            loop = "   (stays)" if target is phase else ""
            diagram.append(f"    {phase.name:<{width}} {arrow} {target.name}{loop}")
        diagram.append("")

    set_rows = []
    for name, meaning in _PHASE_SETS.items():
        members = getattr(_lifecycle, name)
        listed = ", ".join(f"``{p.name}``" for p in phases if p in members)
        set_rows.append([f"``{name}``", listed, _text(meaning)])
    sets = _list_table("Named sets of states", ["Set", "States", "Meaning"], set_rows, "16 44 40")

    intro = (
        "A child starts ``RUNNING``. The diagram lists, for each state, every move out of it "
        "and where it leads. A move marked ``(stays)`` leaves the state unchanged: a journal "
        "entry replayed after an interruption, late news (a release after delivery, a "
        "close), or a continue of a child that runs.\n\n"
    )
    return "\n".join([intro + "\n".join(diagram), states, move_table, table, sets])


def write_generated(app: Sphinx | None = None) -> None:
    """Write the generated include files, touching only those whose text changed."""
    GENERATED.mkdir(exist_ok=True)
    source = "childproc._policy"
    pages = {
        "mode_rules.rst": (source, mode_rules_table()),
        "route_table.rst": (source, route_table()),
        "watchers.rst": (source, watcher_table()),
        "lifecycle.rst": ("childproc._lifecycle.TRANSITIONS", lifecycle_page()),
        "scaling.rst": (
            _shown(SCALING_JSON) + ("" if SCALING_JSON.is_file() else " (absent)"),
            scaling_page(SCALING_JSON),
        ),
        "bigparent.rst": (_shown(BIGPARENT_JSON), bigparent_page(BIGPARENT_JSON)),
        "forkfaults.rst": (_shown(FORKFAULTS_JSON), forkfaults_page(FORKFAULTS_JSON)),
        "torture.rst": (_shown(TORTURE_JSON), torture_page(TORTURE_JSON)),
        "throughput.rst": (_shown(THROUGHPUT_JSON), throughput_page(THROUGHPUT_JSON)),
        "throughput_realtime.rst": (
            _shown(THROUGHPUT_REALTIME_JSON),
            throughput_page(
                THROUGHPUT_REALTIME_JSON,
                "python benchmarks/throughput.py --realtime "
                "--json benchmarks/results/throughput-realtime.json",
            ),
        ),
        "throughput_adapters.rst": (
            _shown(THROUGHPUT_ADAPTERS_JSON),
            adapters_page(THROUGHPUT_ADAPTERS_JSON),
        ),
        "latency.rst": (_shown(LATENCY_JSON), latency_page(LATENCY_JSON)),
        "pathcost_ablate.rst": (_shown(PATHCOST_ABLATE_JSON), ablate_page(PATHCOST_ABLATE_JSON)),
        "coexistence.rst": (
            "docs/coexistence.json (checked by tests/coexistence)",
            coexistence_table(COEXISTENCE_JSON),
        ),
    }
    for name, (origin, text) in pages.items():
        path = GENERATED / name
        header = f".. generated by docs/conf.py from {origin}; do not edit\n\n{text}"
        if not path.exists() or path.read_text(encoding="utf-8") != header:
            tmp = path.with_name(f".{name}.{os.getpid()}")  # (builds may run side by side: the
            tmp.write_text(header, encoding="utf-8")  # test suite builds the docs on each Python)
            os.replace(tmp, path)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", write_generated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
