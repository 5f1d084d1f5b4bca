"""``Context.run``: ``subprocess.run`` on a childproc context.

Spawn with the pipes asked for, :meth:`Child.communicate` (its I/O rules), and
on a timeout kill the child with SIGKILL (its whole tree with
``kill_tree=True``), wait for its exit (delivered as any other) and raise
:class:`~childproc.TimeoutExpired` with the output read so far. Any other
exception (a ``KeyboardInterrupt`` included) kills and reaps the child too, and
every pipe is closed on every path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import ChildprocError, ChildStolenError, InvalidArgumentError, StateError
from ._results import CalledProcessError, CompletedProcess, TimeoutExpired
from ._spawn import PIPE
from ._stdio import command_of
from ._trees import settle

if TYPE_CHECKING:
    from ._child import Child
    from ._spawn import Argv


class Context(Protocol):
    """What ``run`` needs of a :class:`~childproc.Context` (no import: the context
    loads this module on first use)."""

    @property
    def spawn(self) -> Callable[..., Child]: ...
    def _reports_here(self) -> bool: ...


__all__ = ["RunRequest", "kill", "result", "run", "settle"]


class RunRequest:
    """``run()``'s arguments (``subprocess.run``'s) sorted out once for every
    adapter: what goes to ``spawn`` (``spawn_options``, the child owned with
    ``kill_on_close`` unless told otherwise), and what ``run`` itself uses.
    Refusals are ``subprocess``'s, as :class:`InvalidArgumentError` (a ``ValueError``)."""

    __slots__ = ("check", "input", "spawn_options", "timeout")

    def __init__(self, options: dict[str, Any]) -> None:
        self.input: Any = options.pop("input", None)
        self.timeout: float | None = options.pop("timeout", None)
        self.check = bool(options.pop("check", False))
        capture_output = options.pop("capture_output", False)
        universal_newlines = options.pop("universal_newlines", None)
        if self.input is not None:
            if options.get("stdin") is not None:
                raise InvalidArgumentError("stdin and input arguments may not both be used")
            options["stdin"] = PIPE
        if capture_output:
            if options.get("stdout") is not None or options.get("stderr") is not None:
                raise InvalidArgumentError("stdout and stderr arguments may not be used with capture_output")
            options["stdout"] = options["stderr"] = PIPE
        if universal_newlines is not None:
            if options.get("text") and not universal_newlines:
                raise InvalidArgumentError("text and universal_newlines are given and differ")
            options["text"] = bool(universal_newlines)
        options.setdefault("kill_on_close", True)
        self.spawn_options = options


def run(ctx: Context, argv: Argv, **options: Any) -> CompletedProcess:
    """See :meth:`Context.run`."""
    req = RunRequest(options)
    if ctx._reports_here():
        raise StateError(
            "run() waits for the child's exit, and in MAINLOOP this thread is the one that "
            "reports exits (childproc_reaped, sigchld_occurred): call run() from another "
            "thread, or spawn() and use the callback"
        )
    child = ctx.spawn(argv, **req.spawn_options)
    try:
        out, err = child.communicate(req.input, req.timeout)
    except TimeoutExpired as exc:
        kill(child)
        child.wait()
        settle(child._tree, kill=True)
        exc.event = child.final
        raise
    except BaseException:
        kill(child)
        child.release()
        settle(child._tree, kill=True)
        raise
    finally:
        if child._io is not None:
            child._io.close()
    return result(child, out, err, req.check)


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
    """SIGKILL ``child`` (its whole tree if it has one: ``kill_tree=True``) unless it
    exited already. The caller waits for the exit, then settles the tree (:func:`settle`)."""
    for how in (child.kill_tree, child.kill) if child._tree is not None else (child.kill,):
        try:
            how()  # (the child is in its tree, unless it left its process group itself)
        except ChildprocError:
            pass  # exited already, or cannot be signalled (closed context): the first error goes on
