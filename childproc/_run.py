"""``Context.run``: ``subprocess.run`` on a childproc context.

Spawn with the pipes asked for, :meth:`Child.communicate` (its I/O rules), and
on a timeout kill the child with SIGKILL (its whole tree with
``kill_tree=True``), wait for its exit (delivered as any other) and raise
:class:`~childproc.TimeoutExpired` with the output read so far. Any other
exception (a ``KeyboardInterrupt`` included) kills and reaps the child too, and
every pipe is closed on every path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ._childio import FileOptions
from ._errors import ArgumentTypeError, ChildprocError, ChildStolenError, InvalidArgumentError, StateError
from ._pump import check_input
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


#: The keywords ``run`` hands to ``spawn`` (``Context.spawn``'s keyword-only
#: parameters; a unit test keeps the two the same).
SPAWN_OPTIONS = frozenset(
    {
        "env", "cwd", "pass_fds", "stdin", "stdout", "stderr", "text", "encoding", "errors",
        "universal_newlines", "bufsize",
        "events", "oneshot", "reap_after_callback", "kill_on_close", "start_new_session",
        "process_group", "kill_tree",
    }
)  # fmt: skip
_RUN_OPTIONS = frozenset({"input", "timeout", "check", "capture_output"})

#: ``subprocess.run``/``Popen`` arguments childproc does not take, and what to do instead.
_NOT_TAKEN = {
    "shell": "childproc runs argv as given and never parses a command line: run "
    "['/bin/sh', '-c', command] for a shell",
    "executable": "give the program's path as argv[0]",
    "preexec_fn": "fork with ctx.fork(), run the function in the child, then os.execv() "
    "(see 'from subprocess to childproc')",
    "close_fds": "the child gets stdin, stdout, stderr, pass_fds and the fds you made inheritable "
    "(Python's are close-on-exec); there is no sweep: leave it out, and keep your fds close-on-exec",
    "restore_signals": "the child always starts with SIGPIPE, SIGXFSZ and SIGCHLD at their "
    "defaults (restore_signals=True): leave it out",
    "user": "not supported: start the child through a program that changes user (setpriv, runuser)",
    "group": "not supported: start the child through a program that changes group (setpriv)",
    "extra_groups": "not supported: start the child through setpriv",
    "umask": "not supported: set it in a shell (['/bin/sh', '-c', 'umask 077 && exec \"$@\"', 'sh', ...])",
    "pipesize": "not supported: the pipes have the system's default size",
    "startupinfo": "Windows only",
    "creationflags": "Windows only",
    # trio's and anyio's run_process spell some of it differently:
    "capture_stdout": "that is trio's name: give stdout=PIPE (capture_output=True for both pipes)",
    "capture_stderr": "that is trio's name: give stderr=PIPE (capture_output=True for both pipes)",
    "deliver_cancel": "a cancelled run() kills the child with SIGKILL (and its tree, with "
    "kill_tree=True) and waits for its exit: leave it out",
    "task_status": "run() is awaited, not started in a nursery: await ctx.run(...)",
}

#: What ``spawn`` says instead, where ``_NOT_TAKEN``'s advice is ``run()``'s.
_NOT_TAKEN_BY_SPAWN = {
    **dict.fromkeys(
        ("capture_output", "input", "timeout"),
        "that is run()'s: use ctx.run(...), or give stdin=PIPE/stdout=PIPE/stderr=PIPE "
        "and call child.communicate(input, timeout=...)",
    ),
    "check": "that is run()'s: use ctx.run(..., check=True), or look at child.wait().returncode",
    "capture_stdout": "that is trio's run_process's: give stdout=PIPE",
    "capture_stderr": "that is trio's run_process's: give stderr=PIPE",
    "deliver_cancel": "that is trio's run_process's: to kill the child when a wait is cancelled, "
    "await child.wait(kill_on_cancel=True), or hold it in 'async with'",
    "task_status": "that is trio's run_process's: spawn() starts the child and returns its handle",
}


def refuse_options(unknown: Collection[str], call: str = "run") -> NoReturn:
    """Raise :class:`ArgumentTypeError` for the first of ``unknown``, keywords that
    ``call`` (``run``, ``spawn``) does not take: what to do instead, or the name
    it probably meant."""
    name = sorted(unknown)[0]
    why = (_NOT_TAKEN_BY_SPAWN.get(name) if call == "spawn" else None) or _NOT_TAKEN.get(name)
    if why is None:
        known = SPAWN_OPTIONS | {"on_event"} | (_RUN_OPTIONS if call == "run" else frozenset())
        close = difflib.get_close_matches(name, sorted(known), n=1)
        why = f"did you mean {close[0]!r}?" if close else f"Context.{call} says what it takes"
        raise ArgumentTypeError(f"{call}() got an unexpected keyword argument {name!r}: {why}")
    raise ArgumentTypeError(f"{call}() does not take {name}=: {why}")


class RunRequest:
    """``run()``'s arguments (``subprocess.run``'s) sorted out once for every
    adapter: what goes to ``spawn`` (``spawn_options``, the child owned with
    ``kill_on_close`` unless told otherwise), and what ``run`` itself uses.
    Refusals are ``subprocess``'s, as :class:`InvalidArgumentError` (a ``ValueError``);
    an argument ``run`` does not take (``shell=True``, a misspelling) is an
    :class:`InvalidArgumentError` that is also a ``TypeError`` (as Python's own for
    an unexpected keyword), saying what to do."""

    __slots__ = ("check", "input", "spawn_options", "timeout")

    def __init__(self, options: dict[str, Any]) -> None:
        self.input: Any = options.pop("input", None)
        self.timeout: float | None = options.pop("timeout", None)
        self.check = bool(options.pop("check", False))
        capture_output = options.pop("capture_output", False)
        if isinstance(options.get("stdin"), (bytes, bytearray, memoryview, str)):
            raise ArgumentTypeError(
                "stdin takes where the child reads from (PIPE, DEVNULL, an fd, a file); to feed it "
                "data give input=... (trio's run_process takes the data as stdin=)"
            )
        if self.input is not None:
            if options.get("stdin") is not None:
                raise InvalidArgumentError("stdin and input arguments may not both be used")
            files = FileOptions.of(
                options.get("text", False),
                options.get("encoding"),
                options.get("errors"),
                options.get("universal_newlines"),
                None,  # (bufsize: spawn checks it, and warns once)
            )
            check_input(self.input, files.text)  # (before a child exists)
            options["stdin"] = PIPE
        if capture_output:
            if options.get("stdout") is not None or options.get("stderr") is not None:
                raise InvalidArgumentError("stdout and stderr arguments may not be used with capture_output")
            options["stdout"] = options["stderr"] = PIPE
        unknown = options.keys() - SPAWN_OPTIONS - {"on_event"}
        if unknown:
            refuse_options(unknown)
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
        kill_and_own(child)  # (kill_on_close=False too: release() then reaps it)
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


def kill_and_own(child: Any) -> None:
    """SIGKILL ``child`` (its tree too) and own it (``kill_on_close``), so that
    ``close()`` reaps it if its exit is never collected; the exit is delivered to
    ``on_event`` as any other. For a wait abandoned with ``kill_on_cancel``, and
    for a call that makes a child cut short (a ``KeyboardInterrupt``) once the
    child exists: its caller got the exception, not the handle, and could never
    stop it. Nothing for a handle without a child's pid (a forked child's)."""
    pid = child._pid
    if type(pid) is int and pid > 1:
        child.kill_on_close = True
        kill(child)


def kill(child: Any) -> None:
    """SIGKILL ``child`` (its whole tree if it has one: ``kill_tree=True``) unless it
    exited already. The caller waits for the exit, then settles the tree (:func:`settle`)."""
    for how in (child.kill_tree, child.kill) if child._tree is not None else (child.kill,):
        try:
            how()  # (the child is in its tree, unless it left its process group itself)
        except ChildprocError:
            pass  # exited already, or cannot be signalled (closed context): the first error goes on
