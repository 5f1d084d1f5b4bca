"""A child's standard streams: what ``stdin=``, ``stdout=``, ``stderr=`` ask for, and the pipes.

``resolve`` turns the three arguments into where each of the child's fds 0-2
comes from, raising before any fd exists: ``None`` (inherited), :data:`PIPE`
(a new pipe), :data:`DEVNULL` (``/dev/null``, opened in the child: no fd in
the parent), :data:`STDOUT` (stderr only: the same as the child's stdout), an
fd, or an object with ``fileno()`` (neither flushed nor closed, as with
``subprocess``).

A child with at least one pipe gets a :class:`Pipes` record, the one owner of
every pipe fd it needs: the parent's ends (kept for the application) and the
child's (closed once the child has them). Rules:

* every fd is close-on-exec and above 0-2 (:func:`childproc._fds.above_stdio`),
  so no other child inherits it and a host juggling its stdio never meets it;
* each fd is closed exactly once: its slot is emptied and the fd closed with
  no Python code between (a ``KeyboardInterrupt`` lands before both or after
  both), and every close path (the start failing, the application closing a
  stream, :meth:`Child.communicate`, releasing the handle, closing the context,
  the record being forgotten) goes through :meth:`Pipes.close`;
* a child forked without ``exec`` closes every record's fds
  (:func:`abandon_after_fork`): a stdin pipe held open by another process
  would never give its reader EOF.
"""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import InvalidArgumentError
from ._fds import above_stdio
from ._spawn import DEVNULL, PIPE, STDOUT
from ._weakbag import WeakBag

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Pipes",
    "StdioPlan",
    "abandon_after_fork",
    "child_sources",
    "command_of",
    "forked",
    "forking",
    "prepare",
    "redirect_in_child",
    "resolve",
]

_NAMES = ("stdin", "stdout", "stderr")

#: Every record with fds still open, for :func:`abandon_after_fork`.
_RECORDS: WeakBag[Pipes] = WeakBag()


class StdioPlan:
    """Where the child's fds 0-2 come from: per target, None (inherited), an fd,
    :data:`DEVNULL` or :data:`PIPE`."""

    __slots__ = ("piped", "sources")

    def __init__(self, sources: tuple[int | None, int | None, int | None]) -> None:
        self.sources = sources
        self.piped = tuple(t for t in range(3) if sources[t] == PIPE)


def _source(value: object, target: int) -> int | None:
    name = _NAMES[target]
    if value is None or value in (PIPE, DEVNULL):
        return value  # type: ignore[return-value, unused-ignore]
    if value == STDOUT and not isinstance(value, bool):
        if target != 2:
            raise InvalidArgumentError(f"STDOUT is only for stderr (the child's stdout), not for {name}")
        return STDOUT
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidArgumentError(f"{name} must be an fd (>= 0), PIPE, DEVNULL or None, not {value}")
        return value
    fileno = getattr(value, "fileno", None)
    if callable(fileno):
        fd = fileno()
        if isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0:
            return fd
    raise InvalidArgumentError(
        f"{name} must be PIPE, DEVNULL, {'STDOUT, ' if target == 2 else ''}an fd, a file object "
        f"with fileno(), or None; not {value!r}"
    )


def resolve(stdin: object, stdout: object, stderr: object) -> StdioPlan:
    """Check ``stdin``, ``stdout``, ``stderr`` (raises :class:`InvalidArgumentError`)."""
    return StdioPlan((_source(stdin, 0), _source(stdout, 1), _source(stderr, 2)))


class Pipes:
    """The pipes of one child: the parent's ends (``parent[target]``) and, until the
    child has them, the child's (``child[target]``); -1 where there is none."""

    __slots__ = ("__weakref__", "child", "hooks", "parent", "views")

    def __init__(self) -> None:
        self.parent = [-1, -1, -1]
        self.child = [-1, -1, -1]
        #: The application's raw file objects over the parent's ends: marked closed
        #: when the end is, so that none reads or writes a number reused meanwhile.
        self.views: list[io.FileIO | None] = [None, None, None]
        #: Called just before a parent's end is closed, by whoever watches it on a
        #: loop (an asyncio transport, an anyio stream): to stop watching the number.
        self.hooks: list[Callable[[], object] | None] = [None, None, None]

    @classmethod
    def open(cls, plan: StdioPlan) -> Pipes:
        """A pipe for each piped target. On an error (EMFILE), or interrupted, what
        was opened is closed again before this raises."""
        pipes = cls()
        _RECORDS.add(pipes)  # (first: a fork on another thread meanwhile closes what it holds)
        made: list[tuple[int, int]] = []
        try:
            for target in plan.piped:
                # The pair lands in ``made`` from C: no fd exists unrecorded.
                made.extend(itertools.starmap(os.pipe2, ((os.O_CLOEXEC,),)))
                r, w = made.pop()  # (interrupted right here, two fds leak: never a double close)
                ours, theirs = (w, r) if target == 0 else (r, w)
                pipes.parent[target] = ours
                pipes.child[target] = theirs
                for ends in (pipes.parent, pipes.child):
                    if ends[target] > 2:
                        continue
                    low, ends[target] = ends[target], -1  # the host had closed one of its stdio fds
                    ends[target] = above_stdio(low)  # (closes the low number)
        except BaseException:
            for r, w in made:
                os.close(r)
                os.close(w)
            pipes.close_all()
            raise
        return pipes

    def close_child_ends(self) -> None:
        """The child has its ends (or will never be made): close ours of theirs."""
        ends = self.child
        for target in range(3):
            fd = ends[target]
            if fd >= 0:
                ends[target] = -1
                os.close(fd)  # (the slot emptied and the fd closed: nothing runs between)

    def close(self, target: int) -> None:
        """Close the parent's end for ``target`` (EOF on the child's stdin; stop
        reading its stdout or stderr). Idempotent."""
        fd = self.parent[target]
        if fd >= 0:
            hook = self.hooks[target]
            if hook is not None:
                self.hooks[target] = None
                try:
                    hook()
                except Exception:  # (a loop gone already: the close goes on)
                    pass
            self.parent[target] = -1
            os.close(fd)
        view = self.views[target]
        if view is not None:
            self.views[target] = None
            io.FileIO.close(view)  # (closefd=False: only marks it closed)

    def close_all(self) -> None:
        """Close every fd still open. Idempotent, and safe to run again if interrupted."""
        self.close_child_ends()
        for target in range(3):
            self.close(target)

    def __del__(self) -> None:
        # Forgotten with fds open (its Child dropped unclosed): close them, as a file
        # object does. In a forked child the numbers are the parent's: leave them.
        try:
            if os.getpid() == _PID:
                self.close_all()
        except (OSError, AttributeError):
            pass


_PID = os.getpid()


def prepare(
    stdin: object, stdout: object, stderr: object
) -> tuple[Pipes | None, tuple[int | None, int | None, int | None] | None]:
    """``stdin``, ``stdout``, ``stderr`` checked and their pipes opened: the
    :class:`Pipes` (None without a pipe) and what the child's fds 0-2 are made
    from (None if all three are inherited)."""
    if stdin is None and stdout is None and stderr is None:
        return None, None
    plan = resolve(stdin, stdout, stderr)
    pipes = Pipes.open(plan) if plan.piped else None
    return pipes, child_sources(plan, pipes)


def child_sources(plan: StdioPlan, pipes: Pipes | None) -> tuple[int | None, int | None, int | None]:
    """What the child's fds 0-2 are made from: ``plan``'s, the pipes' child ends in
    place of :data:`PIPE`, stdout's source (or fd 1) in place of :data:`STDOUT`."""
    out: list[int | None] = list(plan.sources)
    if pipes is not None:
        for target in plan.piped:
            out[target] = pipes.child[target]
    if out[2] == STDOUT:
        out[2] = out[1] if out[1] is not None else 1
    return out[0], out[1], out[2]


def redirect_in_child(sources: Sequence[int | None], pipes: Pipes | None) -> None:
    """In a child forked with ``stdin=``/``stdout=``/``stderr=``: put each source
    at 0-2 (sources may cross: every one is copied above 2 first), then close the
    pipes' fds. A failure here cannot be reported to the parent's caller: it is
    written to fd 2 and the child exits with status 127."""
    try:
        copies: dict[int, int] = {}
        for target, source in enumerate(sources):
            if source is None:
                continue
            if source == DEVNULL:
                copies[target] = os.open(os.devnull, os.O_RDONLY if target == 0 else os.O_WRONLY)
            else:
                copies[target] = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 3)
        for target, fd in copies.items():
            os.dup2(fd, target)  # (inheritable: the child's own stdio)
            os.close(fd)
        if pipes is not None:
            pipes.close_all()
        _close_kept()
    except OSError as exc:
        try:
            os.write(2, f"childproc: cannot set up the forked child's stdio: {exc}\n".encode())
        finally:
            os._exit(127)


def command_of(argv: Any) -> Any:
    """``argv`` as the ``args``/``cmd`` results carry (a list, as given; None for a fork)."""
    return list(argv) if argv is not None else None


#: Per thread, what a ``Context.fork`` on it is forking with: the child's pipes and
#: the fds its stdio comes from (the forked child keeps those; see abandon_after_fork).
_FORKING: dict[int, tuple[Pipes | None, frozenset[int]]] = {}
#: In a forked child: other records' fds kept because its stdio comes from them.
_KEPT: list[int] = []


def _close_kept() -> None:
    """In a forked child: close the other children's pipe ends kept only to be copied
    onto this one's stdio."""
    for fd in _KEPT:
        if fd > 2:
            os.close(fd)
    _KEPT.clear()


def forking(pipes: Pipes | None, sources: Sequence[int | None] | None) -> None:
    """The calling thread is about to fork a child whose stdio is ``sources``."""
    keep = frozenset(fd for fd in sources or () if fd is not None and fd >= 0)
    _FORKING[threading.get_ident()] = (pipes, keep)


def forked() -> None:
    """The calling thread's fork is over (in the parent and in the child)."""
    _FORKING.pop(threading.get_ident(), None)


def abandon_after_fork() -> None:
    """In a forked child: close every record's fds (they are the parent's), but the
    child ends of the record this child was forked with and the fds its stdio is
    to be copied from (the forking thread's :func:`forking`)."""
    global _PID
    _PID = os.getpid()
    mine, keep = _FORKING.get(threading.get_ident(), (None, frozenset()))
    _FORKING.clear()
    _KEPT.clear()
    for pipes in list(_RECORDS):
        for view in pipes.views:
            if view is not None:
                io.FileIO.close(view)  # (the application's file objects: closed here)
        for ends in (pipes.parent, pipes.child) if pipes is not mine else (pipes.parent,):
            for target in range(3):
                fd = ends[target]
                if fd >= 0:
                    ends[target] = -1
                    if fd in keep:
                        _KEPT.append(fd)
                        continue
                    try:
                        os.close(fd)
                    except OSError:
                        pass
    _RECORDS.clear()
