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

if _typing.TYPE_CHECKING:  # for type checkers and readers; at run time see __getattr__ below
    from ._child import Child, ChildState, EventCallback
    from ._context import Context, ForkReplacement, Hooks, ReapedCallback
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
    from ._process import postfork_child_noexec
    from ._status import ChildEvent, EventCode, describe_status

    owner_libxl = SigchldOwner.LIBXL
    owner_mainloop = SigchldOwner.MAINLOOP
    owner_libxl_always = SigchldOwner.LIBXL_ALWAYS
    owner_selective_reap = SigchldOwner.SELECTIVE_REAP
    owner_pidfd = SigchldOwner.PIDFD

# Names are imported on first use (PEP 562), so that ``import childproc.forkserver``
# in a fresh fork server loads neither threading nor logging: their at-fork hooks
# would run in every child the server forks (see ForkServer.start_fresh).
_WHERE = {
    **dict.fromkeys(("Child", "ChildState", "EventCallback"), "_child"),
    **dict.fromkeys(("Context", "ForkReplacement", "Hooks", "ReapedCallback"), "_context"),
    **dict.fromkeys(
        (
            "AlreadyWatchedError",
            "ChildExitedError",
            "ChildprocError",
            "ChildStolenError",
            "ClosedError",
            "ForkedContextError",
            "ForkError",
            "HandlerReplacedError",
            "InvalidArgumentError",
            "NotOurChildError",
            "PidfdUnavailableError",
            "SigchldConflictError",
            "SpawnError",
            "StateError",
            "UnknownChildError",
        ),
        "_errors",
    ),
    "ChildCallback": "_ledger",
    "SigchldOwner": "_policy",
    "postfork_child_noexec": "_process",
    **dict.fromkeys(("ChildEvent", "EventCode", "describe_status"), "_status"),
}
#: Aliases for readers of the libxl documentation (``libxl_sigchld_owner_*``).
_OWNER_ALIASES = {
    "owner_libxl": "LIBXL",
    "owner_mainloop": "MAINLOOP",
    "owner_libxl_always": "LIBXL_ALWAYS",
    "owner_selective_reap": "SELECTIVE_REAP",
    "owner_pidfd": "PIDFD",
}


if not _typing.TYPE_CHECKING:  # type checkers see the imports above; a typo stays an error

    def __getattr__(name: str) -> _typing.Any:
        import importlib  # noqa: PLC0415

        if name in _WHERE:
            value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        elif name in _OWNER_ALIASES:
            value = importlib.import_module(f"{__name__}._policy").SigchldOwner[_OWNER_ALIASES[name]]
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # once is enough
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

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
