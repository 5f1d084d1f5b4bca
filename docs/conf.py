"""Sphinx configuration for the childproc documentation.

The mode tables in ``modes.rst`` and the watcher table in ``design.rst`` are
not written by hand: :func:`write_generated` renders them from
``childproc._policy`` into ``docs/_generated/`` every time the site is built,
and the pages ``.. include::`` them. Change the policy table and the docs follow.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import childproc  # noqa: E402
from childproc import _policy  # noqa: E402

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
    return str(value).replace("collections.abc.", "").replace("typing.", "")


# ``|alias-of-ChildCallback|`` and friends, so api.rst shows what the aliases really are.
rst_epilog = "\n".join(
    f".. |alias-of-{name}| replace:: ``{_alias(getattr(childproc, name))}``"
    for name in ("ChildCallback", "ForkReplacement", "ReapedCallback")
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
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        first, *rest = row
        lines.append(f"   * - {first}")
        lines.extend(f"     - {cell}" for cell in rest)
    return "\n".join(lines) + "\n"


def _watcher(kind: _policy.WatcherKind) -> str:
    return f"``{kind.name}``: {_text(kind.value)}"


def mode_rules_table() -> str:
    """One column per mode, one row per field of :class:`childproc._policy.ModeRules`."""
    modes = list(_policy.RULES)
    rules = [_policy.RULES[m] for m in modes]
    rows: list[list[str]] = [
        ["Use it for", *(_text(r.use_when) for r in rules)],
        ["SIGCHLD handler installed", *(_text(r.handler.value) for r in rules)],
        ["Who reaps", *(_text(r.reaper.value) for r in rules)],
        [
            "Watcher (pidfds available)",
            *(_watcher(_policy.choose_watcher(m, pidfds_usable=True)) for m in modes),
        ],
        [
            "Watcher (no pidfds)",
            *(_watcher(_policy.choose_watcher(m, pidfds_usable=False)) for m in modes),
        ],
        ["Application reports deaths", *(_yes_no(r.app_reports) for r in rules)],
        ["Takes ``Hooks.reaped_callback``", *(_yes_no(r.takes_reaped_callback) for r in rules)],
        ["Each child's pidfd wakes ``fileno()``", *(_yes_no(r.pidfd_wakeups) for r in rules)],
        ["The application promises", *(_text(r.app_promise) for r in rules)],
    ]
    header = ["Rule", *(_mode(m) for m in modes)]
    return _list_table("What each mode promises and demands", header, rows, "16 21 21 21 21")


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
            with_fds = _policy.choose_watcher(mode, pidfds_usable=True) is kind
            without = _policy.choose_watcher(mode, pidfds_usable=False) is kind
            if with_fds and without:
                used_by.append(_mode(mode))
            elif with_fds or without:
                used_by.append(f"{_mode(mode)} ({'with' if with_fds else 'without'} pidfds)")
        rows.append([f"``{kind.name}``", _text(kind.value), ", ".join(used_by) or "(no mode)"])
    return _list_table(
        "Which watcher reaps for which mode", ["Watcher", "Mechanism", "Used by"], rows, "14 43 43"
    )


def write_generated(app: Sphinx | None = None) -> None:
    """Write the generated include files, touching only those whose text changed."""
    GENERATED.mkdir(exist_ok=True)
    pages = {
        "mode_rules.rst": mode_rules_table(),
        "route_table.rst": route_table(),
        "watchers.rst": watcher_table(),
    }
    for name, text in pages.items():
        path = GENERATED / name
        header = f".. generated by docs/conf.py from childproc._policy; do not edit\n\n{text}"
        if not path.exists() or path.read_text(encoding="utf-8") != header:
            path.write_text(header, encoding="utf-8")


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", write_generated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
