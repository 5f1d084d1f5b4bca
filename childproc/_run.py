"""``Context.run``: ``subprocess.run`` on a childproc context.

Spawn with the pipes asked for, :meth:`Child.communicate` (its I/O rules), and
on a timeout kill the child with SIGKILL, wait for its exit (delivered as any
other) and raise :class:`~childproc.TimeoutExpired` with the output read so
far. Any other exception (a ``KeyboardInterrupt`` included) kills and reaps the
child too, and every pipe is closed on every path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import ChildExitedError, ChildStolenError, InvalidArgumentError, StateError
from ._results import CalledProcessError, CompletedProcess, TimeoutExpired
from ._spawn import PIPE
from ._stdio import command_of

if TYPE_CHECKING:
    from ._child import Child
    from ._spawn import Argv


class Context(Protocol):
    """What ``run`` needs of a :class:`~childproc.Context` (no import: the context
    loads this module on first use)."""

    @property
    def spawn(self) -> Callable[..., Child]: ...
    def _reports_here(self) -> bool: ...


__all__ = ["run"]


def run(
    ctx: Context,
    argv: Argv,
    *,
    input: Any = None,
    capture_output: bool = False,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    timeout: float | None = None,
    check: bool = False,
    text: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    universal_newlines: bool | None = None,
    **options: Any,
) -> CompletedProcess:
    """See :meth:`Context.run`."""
    if input is not None:
        if stdin is not None:
            raise InvalidArgumentError("stdin and input arguments may not both be used")
        stdin = PIPE
    if capture_output:
        if stdout is not None or stderr is not None:
            raise InvalidArgumentError("stdout and stderr arguments may not be used with capture_output")
        stdout = stderr = PIPE
    if universal_newlines is not None:
        if text and not universal_newlines:
            raise InvalidArgumentError("text and universal_newlines are given and differ")
        text = bool(universal_newlines)
    if ctx._reports_here():
        raise StateError(
            "run() waits for the child's exit, and in MAINLOOP this thread is the one that "
            "reports exits (childproc_reaped, sigchld_occurred): call run() from another "
            "thread, or spawn() and use the callback"
        )
    options.setdefault("kill_on_close", True)
    child = ctx.spawn(
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        encoding=encoding,
        errors=errors,
        **options,
    )
    try:
        out, err = child.communicate(input, timeout)
    except TimeoutExpired as exc:
        _kill(child)
        child.wait()
        exc.event = child.final
        raise
    except BaseException:
        _kill(child)
        child.release()
        raise
    finally:
        if child._io is not None:
            child._io.close()
    event = child.final
    if event is None or event.returncode is None:
        raise ChildStolenError(f"child {child.pid}'s exit status was taken by someone else", child.pid)
    result = CompletedProcess(command_of(child.args), event.returncode, out, err, event=event, pid=child.pid)
    if check and result.returncode:
        raise CalledProcessError(result.returncode, result.args, out, err, event=event, pid=child.pid)
    return result


def _kill(child: Any) -> None:
    """SIGKILL ``child`` unless it exited already (the one place a later feature makes
    this kill the child's whole tree)."""
    try:
        child.kill()
    except ChildExitedError:
        pass
