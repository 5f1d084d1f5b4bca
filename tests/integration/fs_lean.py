"""An entry module that imports nothing: to see what a fresh fork server itself loads."""

from __future__ import annotations

import sys

#: What a fresh server must not hold (the rest of childproc, the big modules it uses,
#: and the Python halves of socket, signal and struct, which bring enum, functools and
#: collections), and the one module of childproc it does hold.
WATCHED = [
    *("threading", "logging", "typing", "dataclasses", "inspect", "enum", "functools"),
    *("collections", "socket", "signal", "selectors", "struct", "array"),
    *("childproc._fork_server", "childproc._context", "childproc._process", "childproc.forkserver"),
]


def loaded() -> list[str]:
    """Run in the server by eval, with no arguments (arguments would make the server
    import json, and json imports enum): which of WATCHED it has imported."""
    return [name for name in WATCHED if name in sys.modules]


def child_returns(server: object, sock: object) -> int:
    """A fork's entry that imports nothing."""
    return 0
