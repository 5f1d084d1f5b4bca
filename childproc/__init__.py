"""childproc: fork child processes from a library, sharing the process with a host that does too.

Quick start::

    import os, childproc

    with childproc.Context() as ctx:          # LIBXL mode by default
        pid = ctx.child_fork(lambda pid, status: print(pid, childproc.describe_status(status)))
        if pid == 0:
            os._exit(3)
        ctx.wait()                            # prints "<pid> exited with status 3"

See the mode guide (docs/modes.rst) to choose a :class:`SigchldOwner`.
"""

from __future__ import annotations

import typing as _typing

from ._child import Child, ChildState, EventCallback
from ._errors import (
    AlreadyWatchedError,
    ChildExitedError,
    ChildprocError,
    ChildStolenError,
    ClosedError,
    ForkedContextError,
    ForkError,
    HandlerReplacedError,
    InvalidArgumentError,
    NotOurChildError,
    PidfdUnavailableError,
    SigchldConflictError,
    SpawnError,
    StateError,
    UnknownChildError,
)
from ._ledger import ChildCallback
from ._policy import SigchldOwner
from ._status import ChildEvent, EventCode, describe_status

if _typing.TYPE_CHECKING:
    from ._context import Context, ForkReplacement, Hooks, ReapedCallback
    from ._process import postfork_child_noexec

__version__ = "0.1.0"

#: Aliases for readers of the libxl documentation (``libxl_sigchld_owner_*``).
owner_libxl = SigchldOwner.LIBXL
owner_mainloop = SigchldOwner.MAINLOOP
owner_libxl_always = SigchldOwner.LIBXL_ALWAYS
owner_selective_reap = SigchldOwner.SELECTIVE_REAP
owner_pidfd = SigchldOwner.PIDFD

# The context and the process-wide state are imported on first use (PEP 562): they
# load threading and logging, whose at-fork hooks would otherwise run in every
# child of a fresh fork server, which imports childproc.forkserver (and so this
# file) but never makes a Context. Everything imported above loads neither.
_LAZY = {
    **dict.fromkeys(("Context", "ForkReplacement", "Hooks", "ReapedCallback"), "_context"),
    "postfork_child_noexec": "_process",
}

if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo stays an error

    def __getattr__(name: str) -> _typing.Any:
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # once is enough
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Context",
    "Hooks",
    "SigchldOwner",
    "owner_libxl",
    "owner_mainloop",
    "owner_libxl_always",
    "owner_selective_reap",
    "owner_pidfd",
    "Child",
    "ChildState",
    "ChildEvent",
    "EventCode",
    "EventCallback",
    "ChildCallback",
    "ForkReplacement",
    "ReapedCallback",
    "describe_status",
    "postfork_child_noexec",
    "ChildprocError",
    "InvalidArgumentError",
    "StateError",
    "SigchldConflictError",
    "HandlerReplacedError",
    "ForkError",
    "ClosedError",
    "ForkedContextError",
    "ChildStolenError",
    "SpawnError",
    "ChildExitedError",
    "UnknownChildError",
    "AlreadyWatchedError",
    "NotOurChildError",
    "PidfdUnavailableError",
    "__version__",
]
