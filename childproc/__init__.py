"""childproc: fork child processes from a library, sharing the process with a host that does too.

Quick start::

    import os, childproc

    with childproc.Context() as ctx:          # SELECTIVE_REAP by default
        pid = ctx.child_fork(lambda pid, status: print(pid, childproc.describe_status(status)))
        if pid == 0:
            os._exit(3)
        ctx.wait()                            # prints "<pid> exited with status 3"

See the mode guide (docs/modes.rst) to choose a :class:`SigchldOwner`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._child import Child, ChildState, EventCallback
    from ._context import Context, ForkReplacement, Hooks, ReapedCallback
    from ._doctor import DoctorReport, doctor
    from ._errors import (
        AlreadyWatchedError,
        ArgumentTypeError,
        ChildExitedError,
        ChildprocError,
        ChildStolenError,
        ClosedError,
        FdLostError,
        ForkedContextError,
        ForkError,
        HandlerReplacedError,
        InvalidArgumentError,
        NotOurChildError,
        PidfdUnavailableError,
        SigchldConflictError,
        SigchldIgnoredError,
        SpawnError,
        SpawnFileNotFoundError,
        SpawnNotADirectoryError,
        SpawnPermissionError,
        StateError,
        UnknownChildError,
        UnknownEncodingError,
    )
    from ._ledger import ChildCallback
    from ._policy import SigchldOwner
    from ._process import postfork_child_noexec
    from ._results import CalledProcessError, CompletedProcess, TimeoutExpired
    from ._spawn import DEVNULL, PIPE, STDOUT
    from ._status import ChildEvent, EventCode, describe_status
    from ._trees import tree_guarantee

    owner_libxl = SigchldOwner.LIBXL
    owner_mainloop = SigchldOwner.MAINLOOP
    owner_libxl_always = SigchldOwner.LIBXL_ALWAYS
    owner_selective_reap = SigchldOwner.SELECTIVE_REAP
    owner_pidfd = SigchldOwner.PIDFD

__version__ = "0.1.0"

# Every public name is imported on first use (PEP 562). A fresh fork server
# imports childproc._fork_server, and so this file: whatever this file imported
# would be in the server's heap, mapped again by every fork and unmapped by every
# child's exit, and the context's modules load threading and logging, whose
# at-fork hooks would run in every child.
_LAZY = {
    **dict.fromkeys(("Child", "ChildState", "EventCallback"), "_child"),
    **dict.fromkeys(("Context", "ForkReplacement", "Hooks", "ReapedCallback"), "_context"),
    **dict.fromkeys(
        (
            "AlreadyWatchedError",
            "ArgumentTypeError",
            "ChildExitedError",
            "ChildprocError",
            "ChildStolenError",
            "ClosedError",
            "ForkedContextError",
            "ForkError",
            "HandlerReplacedError",
            "InvalidArgumentError",
            "NotOurChildError",
            "FdLostError",
            "PidfdUnavailableError",
            "SigchldConflictError",
            "SigchldIgnoredError",
            "SpawnError",
            "SpawnFileNotFoundError",
            "SpawnNotADirectoryError",
            "SpawnPermissionError",
            "StateError",
            "UnknownChildError",
            "UnknownEncodingError",
        ),
        "_errors",
    ),
    "ChildCallback": "_ledger",
    "SigchldOwner": "_policy",
    "postfork_child_noexec": "_process",
    **dict.fromkeys(("CalledProcessError", "CompletedProcess", "TimeoutExpired"), "_results"),
    **dict.fromkeys(("DEVNULL", "PIPE", "STDOUT"), "_spawn"),
    **dict.fromkeys(("ChildEvent", "EventCode", "describe_status"), "_status"),
    "tree_guarantee": "_trees",
    **dict.fromkeys(("DoctorReport", "doctor"), "_doctor"),
}
#: Aliases for readers of the libxl documentation (``libxl_sigchld_owner_*``).
_OWNER_ALIASES = {
    "owner_libxl": "LIBXL",
    "owner_mainloop": "MAINLOOP",
    "owner_libxl_always": "LIBXL_ALWAYS",
    "owner_selective_reap": "SELECTIVE_REAP",
    "owner_pidfd": "PIDFD",
}

if not TYPE_CHECKING:  # type checkers see the imports above; a typo stays an error

    def __getattr__(name):
        if name in _OWNER_ALIASES:
            value = getattr(__getattr__("SigchldOwner"), _OWNER_ALIASES[name])
        elif name in _LAZY:
            from importlib import import_module  # noqa: PLC0415

            value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
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
    "tree_guarantee",
    "doctor",
    "DoctorReport",
    "PIPE",
    "DEVNULL",
    "STDOUT",
    "CompletedProcess",
    "CalledProcessError",
    "TimeoutExpired",
    "ChildprocError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "StateError",
    "SigchldConflictError",
    "HandlerReplacedError",
    "ForkError",
    "ClosedError",
    "ForkedContextError",
    "ChildStolenError",
    "SpawnError",
    "SpawnFileNotFoundError",
    "SpawnPermissionError",
    "SpawnNotADirectoryError",
    "ChildExitedError",
    "UnknownChildError",
    "UnknownEncodingError",
    "AlreadyWatchedError",
    "NotOurChildError",
    "PidfdUnavailableError",
    "SigchldIgnoredError",
    "FdLostError",
    "__version__",
]
