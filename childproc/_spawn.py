"""Run a program with ``posix_spawn``: no copy of the interpreter, cost independent of its size.

glibc's ``posix_spawn`` uses ``clone(CLONE_VM | CLONE_VFORK)``: the parent's
memory is never copied or even mapped again, so spawning from a 4 GiB parent
costs what it costs from a small one, where ``os.fork()`` must copy the page
tables. Python's ``os.posix_spawn`` has no "change directory" action, so a
``cwd`` is honoured by exec'ing ``/bin/sh`` first (one more exec, still
independent of the parent's size).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Union

from ._errors import InvalidArgumentError

__all__ = ["Argv", "spawn_process"]

Argv = Sequence[Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]]

# Python ignores these; a program started by subprocess gets them back at their
# defaults, and so does one started here. SIGCHLD too: an ignored SIGCHLD would
# survive exec and make the program's own children vanish.
_SIGDEF = frozenset(s for s in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None), signal.SIGCHLD) if s)

_CD_THEN_EXEC = 'cd -- "$1" && shift && exec "$@"'


def _fd(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgumentError(f"{what} must be a file descriptor (int >= 0), not {value!r}")
    return value


def spawn_process(
    argv: Argv,
    *,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    pass_fds: Sequence[int],
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
) -> int:
    """``posix_spawn`` ``argv``; return the pid. Raises ``OSError`` (e.g. ENOENT)."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise InvalidArgumentError(f"argv must be a non-empty list of arguments, not {argv!r}")
    args = [os.fspath(a) for a in argv]
    actions: list[tuple[Any, ...]] = []
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        if fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, _fd(fd, "stdin/stdout/stderr"), target))
    for fd in pass_fds:
        # dup2 onto itself clears close-on-exec in the child only (glibc >= 2.29),
        # so the parent's fd keeps its flags and no other thread can race us.
        actions.append((os.POSIX_SPAWN_DUP2, _fd(fd, "each of pass_fds"), fd))
    if cwd is not None:
        args = ["/bin/sh", "-c", _CD_THEN_EXEC, "sh", os.fspath(cwd), *(os.fsdecode(a) for a in args)]
    path = args[0]
    spawn = os.posix_spawn if "/" in os.fsdecode(path) else os.posix_spawnp
    return spawn(
        path,
        args,
        # os.environb: the same environment, without decoding and re-encoding
        # every variable on each spawn (~0.1 ms with a typical environment).
        os.environb if env is None else env,
        file_actions=actions,
        setsigdef=_SIGDEF,
        setsigmask=(),
    )
