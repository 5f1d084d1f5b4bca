"""Find the loop back-edges where a KeyboardInterrupt skips the enclosing ``try``/``with``.

CPython runs signal handlers at a loop's back-edge (``JUMP_BACKWARD``). On 3.13 the
compiler turns a *conditional* jump back to a loop's head (the test at the bottom of
``while cond:``; the jump back from a loop body that ends in a bare ``if`` or an
``assert``; an inlined comprehension's ``if`` filter) into an inverted jump over a
``JUMP_BACKWARD`` that it leaves out of the exception table (python/cpython#130279).
A KeyboardInterrupt raised there leaves the function at once: no ``except``, no
``finally``, no ``__exit__`` runs, and a ``with lock:`` stays locked.

:func:`escapes_in_file` compiles a file with the running interpreter (3.13 and
later; it finds nothing before) and lists each back-edge the exception table leaves
uncovered whose loop sits inside a ``try`` or ``with`` of the same frame. The fix is
a loop that leaves with ``break`` (``while True: if not cond: break``), ``if not
cond: continue`` first rather than a bare ``if`` last, or the loop moved into a
function of its own.

3.10 has a block stack instead of an exception table. 3.11 and 3.12 have a narrower
relative (python/cpython#108214: the handler is looked up at the instruction
*before* the jump's target, which bites a loop that starts right at its ``try``,
``try: while 1: pass``); this audit does not model it.
"""

from __future__ import annotations

import ast
import dis
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

__all__ = ["Escape", "escapes_in_file"]

_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.GeneratorExp, ast.ClassDef)
_TRIES = tuple(filter(None, (ast.Try, getattr(ast, "TryStar", None))))
#: Code objects whose frames hold no try/with: what escapes them is caught (or not)
#: by the frame that runs them.
_NO_STATEMENTS = {"<genexpr>", "<lambda>"}


class Escape(NamedTuple):
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _uncovered_back_edges(code: types.CodeType) -> Iterator[set[int]]:
    """For each ``JUMP_BACKWARD`` in no exception-table range: the lines it and its
    target carry (the innermost loop holding them is the jump's loop)."""
    entries = list(dis._parse_exception_table(code))  # type: ignore[attr-defined]
    instructions = list(dis.get_instructions(code))
    line_at: dict[int, int] = {}
    line = None
    for ins in instructions:  # (an instruction without a line takes the last one seen)
        positions = getattr(ins, "positions", None)  # (3.11+)
        line = (positions.lineno if positions else None) or line
        if line is not None:
            line_at[ins.offset] = line
    for ins in instructions:
        if ins.opname != "JUMP_BACKWARD":
            continue
        if not any(e.start <= ins.offset < e.end for e in entries):
            yield {n for n in (line_at.get(ins.offset), line_at.get(ins.argval)) if n is not None}


def _inside(node: ast.AST, roots: Iterable[ast.AST | None]) -> bool:
    return any(node is n for root in roots if root is not None for n in ast.walk(root))


def _outer_parts(scope: ast.AST) -> list[ast.AST | None]:
    """The parts of a scope's node that its *enclosing* frame runs: a generator
    expression's first iterable; a function's decorators, defaults and annotations;
    a class's decorators, bases and keywords."""
    if isinstance(scope, ast.GeneratorExp):
        return [scope.generators[0].iter]
    if isinstance(scope, ast.Lambda):
        return [*scope.args.defaults, *scope.args.kw_defaults]
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = scope.args
        annotations = [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
        return [*scope.decorator_list, *a.defaults, *a.kw_defaults, scope.returns, *annotations]
    if isinstance(scope, ast.ClassDef):
        return [*scope.decorator_list, *scope.bases, *scope.keywords]
    return []


def _guarded(loop: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether a ``try`` or ``with`` of the loop's own frame protects it: its body or
    an ``except`` clause; an ``else`` if there is a ``finally``; not a ``finally``."""
    node = loop
    while node in parents:
        node, came_from = parents[node], node
        if isinstance(node, ast.Module):
            return False
        if isinstance(node, _SCOPES):
            if not _inside(loop, _outer_parts(node)):
                return False
            continue
        if isinstance(node, (ast.With, ast.AsyncWith)) and came_from in node.body:
            return True
        if isinstance(node, _TRIES):
            if came_from in node.body or came_from in node.handlers:
                return True
            if came_from in node.orelse and node.finalbody:
                return True
    return False


def escapes_in_file(path: Path) -> list[Escape]:
    """The back-edges in ``path`` where a KeyboardInterrupt skips a ``try``/``with``."""
    if sys.version_info < (3, 13):
        return []
    source = path.read_text()
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    loops = [n for n in ast.walk(tree) if isinstance(n, _LOOPS)]
    found = []
    for code in _code_objects(compile(source, str(path), "exec")):
        if code.co_name in _NO_STATEMENTS:
            continue
        for lines in _uncovered_back_edges(code):
            if not lines:
                continue
            holding = [
                n for n in loops if n.lineno <= min(lines) and max(lines) <= (n.end_lineno or n.lineno)
            ]
            if not holding:
                continue
            loop = max(holding, key=lambda n: (n.lineno, -(n.end_lineno or n.lineno)))
            if _guarded(loop, parents):
                found.append(Escape(str(path), max(lines)))
    return sorted(set(found))
