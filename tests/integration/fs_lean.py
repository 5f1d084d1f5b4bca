"""An entry module that imports nothing: to see what a fresh fork server itself loads."""

from __future__ import annotations

import sys


def loaded(names: list[str]) -> list[str]:
    """Run in the server by eval: which of these modules it has imported."""
    return [name for name in names if name in sys.modules]


def child_returns(server: object, sock: object) -> int:
    """A fork's entry that imports nothing."""
    return 0
