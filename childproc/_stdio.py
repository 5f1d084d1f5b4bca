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
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ._errors import ArgumentTypeError, InvalidArgumentError
from ._fds import above_stdio
from ._sink import Sink
from ._spawn import DEVNULL, PIPE, STDOUT

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "ChildIO",
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
_RECORDS: weakref.WeakSet[Pipes] = weakref.WeakSet()


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
        self.views: list[PipeFile | None] = [None, None, None]
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


class HeldOnly(Exception):
    """(Internal) The readers above a :class:`PipeFile` asked its pipe for more while
    what they hold was being taken."""


class PipeFile(io.FileIO):
    """A parent's pipe end as a raw file object that does not own its fd: closing
    it closes the end through its :class:`Pipes` record (exactly once)."""

    _pipes: Pipes | None = None
    _target = -1
    #: Set while what the readers above hold is taken (:mod:`childproc._held`): a
    #: read of the pipe itself raises :class:`HeldOnly` instead of reading.
    holding = False

    def readinto(self, buffer: Any) -> int | None:
        if self.holding:
            raise HeldOnly
        return super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:  # (what a text reader with bufsize=0 calls)
        if self.holding:
            raise HeldOnly
        return super().read(size)

    def close(self) -> None:
        pipes = self._pipes
        if pipes is not None and not self.closed:
            pipes.close(self._target)
        super().close()


class FileOptions(NamedTuple):
    """How the pipes' file objects are made, as ``Popen`` takes it: ``text`` (or its
    old name ``universal_newlines``), ``encoding`` and ``errors`` (either makes the
    pipes text too), ``bufsize`` (0: unbuffered; 1: a text stdin flushed at each
    line end; more: the buffer's size; negative: the default)."""

    text: bool = False
    encoding: str | None = None
    errors: str | None = None
    bufsize: int = -1

    @classmethod
    def of(
        cls,
        text: bool,
        encoding: str | None,
        errors: str | None,
        universal_newlines: bool | None,
        bufsize: int | None,
    ) -> FileOptions:
        """Checked: raises :class:`InvalidArgumentError` (an ``ArgumentTypeError`` for a
        wrong type) as ``Popen`` would refuse them."""
        if bufsize is None:
            bufsize = -1  # (as Popen takes it)
        if bufsize == -1 and not (text or encoding or errors or universal_newlines is not None):
            return _BINARY  # (the common case: nothing to check)
        if universal_newlines is not None:
            if text and not universal_newlines:
                raise InvalidArgumentError("text and universal_newlines are given and differ")
            text = bool(universal_newlines)
        if not isinstance(bufsize, int) or isinstance(bufsize, bool):
            raise ArgumentTypeError(f"bufsize must be an int (0, 1, a size, or -1), not {bufsize!r}")
        text = bool(text or encoding or errors)
        if bufsize == 1 and not text:
            warnings.warn(
                "line buffering (bufsize=1) is for text pipes; binary ones get the default buffer",
                RuntimeWarning,
                stacklevel=4,
            )
        return cls(text, encoding, errors, bufsize)


_BINARY = FileOptions()


def file_for(pipes: Pipes, target: int, options: FileOptions) -> Any:
    """The application's file object for ``target``'s parent end, as ``Popen`` makes
    them: binary buffered (a ``BufferedWriter`` for stdin, a ``BufferedReader``
    otherwise; the raw file with ``bufsize=0``) or, with ``text``, a
    ``TextIOWrapper`` over it (universal newlines)."""
    raw = PipeFile(pipes.parent[target], "wb" if target == 0 else "rb", closefd=False)
    raw._pipes, raw._target = pipes, target
    pipes.views[target] = raw
    bufsize = options.bufsize
    binary: Any = raw
    if bufsize != 0:
        size = bufsize if bufsize > 1 else io.DEFAULT_BUFFER_SIZE
        binary = io.BufferedWriter(raw, size) if target == 0 else io.BufferedReader(raw, size)
    if not options.text:
        return binary
    return io.TextIOWrapper(
        binary,
        encoding=options.encoding or default_encoding(),
        errors=options.errors,
        write_through=target == 0,
        line_buffering=target == 0 and bufsize == 1,
    )


def default_encoding() -> str:
    """What ``subprocess`` decodes text with: UTF-8 in UTF-8 mode, else the locale's."""
    import locale  # noqa: PLC0415 - only for text mode
    import sys  # noqa: PLC0415

    if sys.flags.utf8_mode:
        return "utf-8"
    getencoding = getattr(locale, "getencoding", None)  # 3.11+
    return getencoding() if getencoding is not None else locale.getpreferredencoding(False)


class ChildIO:
    """A child's pipes and text settings, its file objects (made when first asked
    for) and the state of a :meth:`Child.communicate` that a timeout interrupted."""

    __slots__ = (
        "__weakref__",
        "_files",
        "closing",
        "encoding",
        "errors",
        "held",
        "input",
        "input_at",
        "lock",
        "options",
        "pipes",
        "sinks",
        "started",
        "text",
    )

    def __init__(self, pipes: Pipes | None, options: FileOptions) -> None:
        self.pipes = pipes
        self.options = options
        self.text, self.encoding, self.errors = options.text, options.encoding, options.errors
        self._files: list[Any] = [None, None, None]
        self.started = False
        self.input: memoryview | None = None
        self.input_at = 0
        self.sinks: dict[int, Sink] = {}  # what communicate() read so far, per target
        #: What the application's text readers held when communicate() started, per
        #: target: it comes before what the sink reads from the pipe.
        self.held: dict[int, Any] = {}  # (childproc._held.Held)
        self.lock = threading.Lock()  # held by a communicate() while it runs
        self.closing = False  # close() came while it did: it closes them when it stops

    def file(self, target: int) -> Any:
        """The application's file object for ``target`` (None if it is not piped)."""
        pipes = self.pipes
        if pipes is None:
            return None
        f = self._files[target]
        if f is None and pipes.parent[target] >= 0:
            f = self._files[target] = file_for(pipes, target, self.options)
        return f

    def close_as_popen_exits(self) -> None:
        """Close as ``Popen.__exit__`` does: the read ends first (a child blocked
        writing to one goes on), then stdin once what its file object buffered is
        written (a child that closed its end is no error). While a ``communicate()``
        runs, as :meth:`close`."""
        if not self.lock.acquire(blocking=False):
            self.closing = True
            return
        try:
            if self.pipes is not None:
                self.pipes.close(1)
                self.pipes.close(2)
            self.flush_stdin()
        finally:
            try:
                self._close_all()  # (also after an interrupted flush, as BufferedWriter.close)
            finally:
                self.lock.release()

    def flush_stdin(self) -> None:
        """Write what the application wrote through the stdin file object and it
        buffered (this may block, as ``Popen``'s does); a closed end is no error."""
        f = self._files[0]
        if f is not None and not f.closed:
            try:
                f.flush()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        """Close every pipe fd (the file objects then report closed). While a
        ``communicate()`` runs on another thread or task, it closes them when it
        stops (it watches them: their numbers must not be closed under it)."""
        if not self.lock.acquire(blocking=False):
            self.closing = True
            return
        try:
            self._close_all()
        finally:
            self.lock.release()

    def _close_all(self) -> None:
        if self.pipes is not None:
            self.pipes.close_all()
