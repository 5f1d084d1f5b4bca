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


__all__ = ["kill", "result", "run", "streams_for"]


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
    stdin, stdout, stderr, text = streams_for(
        input=input,
        capture_output=capture_output,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        universal_newlines=universal_newlines,
    )
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
        kill(child)
        child.wait()
        exc.event = child.final
        raise
    except BaseException:
        kill(child)
        child.release()
        raise
    finally:
        if child._io is not None:
            child._io.close()
    return result(child, out, err, check)


def streams_for(
    *,
    input: Any,
    capture_output: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    text: bool,
    universal_newlines: bool | None,
) -> tuple[Any, Any, Any, bool]:
    """``run()``'s stream arguments as ``spawn()`` takes them, checked as ``subprocess``
    checks them (each refusal is an :class:`InvalidArgumentError`, a ``ValueError``)."""
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
    return stdin, stdout, stderr, text


def result(child: Any, out: Any, err: Any, check: bool) -> CompletedProcess:
    """The :class:`CompletedProcess` of ``child`` (whose exit was delivered), or, with
    ``check``, :class:`CalledProcessError` for a non-zero exit."""
    event = child.final
    if event is None or event.returncode is None:
        raise ChildStolenError(f"child {child.pid}'s exit status was taken by someone else", child.pid)
    done = CompletedProcess(command_of(child.args), event.returncode, out, err, event=event, pid=child.pid)
    if check and done.returncode:
        raise CalledProcessError(done.returncode, done.args, out, err, event=event, pid=child.pid)
    return done


def kill(child: Any) -> None:
    """SIGKILL ``child`` unless it exited already (the one place a later feature makes
    this kill the child's whole tree)."""
    try:
        child.kill()
    except ChildExitedError:
        pass
