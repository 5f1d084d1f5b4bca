"""childproc's import graph, read from the source with :mod:`ast`: no cycles.

Every ``import`` and ``from ... import`` statement of every module counts, wherever
it stands: at the top, under ``if TYPE_CHECKING:``, inside a function. A cycle that
only a type checker or a rarely taken path follows is still two modules that cannot
be understood (or moved, or measured) one without the other.

An edge goes from a module to each module of childproc it names: ``from . import x``
names the submodule ``x`` if there is one, else the package; ``from .m import y``
names ``m``, and ``m.y`` too if that is a submodule. A module does not depend on its
parent package by being in it (Python imports the package first, but the package's
``__init__`` loads its parts on first use). Imports of other packages are left out.

Run as a script to print the graph and its cycles:
``python tests/unit/test_import_graph.py [module ...]``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "childproc"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

#: The fork server's modules: the client, the server's process, and their protocol.
FORKSERVER_MODULES = ("childproc.forkserver", "childproc._fork_server", "childproc._forkserver_wire")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name ``from <level dots><target> import ...`` means in ``module``."""
    base = module.split(".")
    if not is_package:
        base.pop()  # a module's relative imports start from its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that ``module`` (the file ``path``) imports anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # ``import a.b.c`` binds a, and loads a.b.c: the deepest known module is meant
                parts = alias.name.split(".")
                for i in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:i])
                    if candidate in known:
                        named.add(candidate)
                        break
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            if base not in known:
                continue
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            named |= submodules
            # Names that are not submodules are the base module's attributes.
            if len(submodules) < len(node.names):
                named.add(base)
    named.discard(module)
    return named


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    found = modules(root)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's cycles, as its strongly connected components of two or more
    modules (Tarjan's algorithm, iterative), each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def a_cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle in ``component`` (a strongly connected one), as the modules along it,
    the first repeated at the end: the shortest back to the component's first module."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    return "\n".join(
        f"  {' <-> '.join(component)}: e.g. {' -> '.join(a_cycle_through(graph, component))}"
        for component in cycles
    )


# -- the tests --------------------------------------------------------------------------


def test_the_graph_is_read_from_every_module() -> None:
    graph = import_graph()
    assert set(FORKSERVER_MODULES) <= set(graph)
    assert {"childproc", "childproc._context", "childproc._watchers"} <= set(graph)
    # forkserver imports the server's side (ForkServer.start runs a Server)
    assert "childproc._fork_server" in graph["childproc.forkserver"]


def test_imports_under_type_checking_and_in_functions_count(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .. import c\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\nimport os\n"
        "from pkg import an_attribute\n"
    )
    (pkg / "b.py").write_text("def f():\n    from . import a\n    import pkg.sub.deep\n")
    (pkg / "c.py").write_text("from pkg.sub import deep\n")
    (pkg / "sub" / "deep.py").write_text("from ..a import name\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg", "pkg.b"},
        "pkg.b": {"pkg.a", "pkg.sub.deep"},
        "pkg.c": {"pkg.sub.deep"},
        "pkg.sub": {"pkg.c"},
        "pkg.sub.deep": {"pkg.a"},
    }
    cycles = strongly_connected(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.deep"]]
    assert a_cycle_through(graph, cycles[0]) == ["pkg.a", "pkg.b", "pkg.a"]


def test_the_fork_servers_modules_are_in_no_cycle() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if set(c) & set(FORKSERVER_MODULES)]
    assert not cycles, "import cycles through the fork server's modules:\n" + describe(graph, cycles)
    assert "childproc.forkserver" not in graph["childproc._fork_server"]


def test_the_wire_protocol_imports_nothing_of_childproc_and_only_c_modules() -> None:
    """The protocol is pure, and a fresh fork server loads it (see _fork_server's rules):
    at run time it imports only the C halves of struct and socket, and nothing of
    childproc even for a type checker."""
    path = ROOT / "_forkserver_wire.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for_type_checkers = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }
    at_run_time, anywhere = set(), set()
    for node in ast.walk(tree):
        names: set[str] = set()
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {"." * node.level + (node.module or "")}
        anywhere |= names
        if id(node) not in for_type_checkers:
            at_run_time |= names
    assert at_run_time == {"__future__", "_socket", "_struct"}, at_run_time
    assert not any(name.startswith((".", PACKAGE)) for name in anywhere), anywhere


def test_there_is_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in childproc:\n" + describe(graph, cycles)


if __name__ == "__main__":
    graph = import_graph()
    wanted = sys.argv[1:] or sorted(graph)
    for name in wanted:
        print(f"{name} -> {', '.join(sorted(graph[name])) or '(nothing of childproc)'}")
    cycles = strongly_connected(graph)
    print("cycles:" if cycles else "no cycles")
    if cycles:
        print(describe(graph, cycles))


def test_trio_host_does_not_import_asyncio() -> None:
    graph = import_graph()
    seen: set[str] = set()
    todo = ["childproc.trio_host"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(graph.get(mod, ()))
    assert "childproc.asyncio_host" not in seen


def test_trio_host_loads_no_asyncio_at_run_time() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    probe = "import sys, childproc.trio_host; print('asyncio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"
