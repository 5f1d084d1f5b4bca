"""A child's pipes as the application sees them: file objects, their settings, communicate()'s state.

``child.stdin``, ``child.stdout`` and ``child.stderr`` are made as ``Popen``
makes them (:func:`file_for`): a raw :class:`PipeFile` over the parent's end,
which closes through the child's :class:`~childproc._stdio.Pipes` record (the
one owner of every pipe fd), buffered unless ``bufsize=0``, and a
``TextIOWrapper`` on top in text mode (:class:`FileOptions`). A
:class:`ChildIO` holds them, made when first asked for, with what a
``communicate()`` that a timeout or a cancellation interrupted had read, so
that the next one carries on.
"""

from __future__ import annotations

import codecs
import io
import threading
from typing import Any, NamedTuple

from ._errors import ArgumentTypeError, InvalidArgumentError, UnknownEncodingError
from ._sink import Sink
from ._stdio import Pipes
from ._warn import warn

__all__ = ["ChildIO", "FileOptions", "HeldOnly", "PipeFile", "default_encoding", "file_for"]


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
        if encoding is not None:
            _check_encoding(encoding)
        text = bool(text or encoding or errors)
        if bufsize == 1 and not text:
            warn(
                "line buffering (bufsize=1) is for text pipes; binary ones get the default buffer",
                RuntimeWarning,
            )
        return cls(text, encoding, errors, bufsize)


_BINARY = FileOptions()


def _check_encoding(encoding: object) -> None:
    """Refuse an ``encoding`` Python has no codec for before any child starts, as
    ``Popen`` does (with a ``LookupError``), and whether or not a pipe would use it."""
    if not isinstance(encoding, str):
        raise ArgumentTypeError(f"encoding must be a str naming a codec, not {encoding!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UnknownEncodingError(
            f"unknown encoding {encoding!r}: give a codec's name, such as 'utf-8' or 'latin-1' "
            "(the codecs module's documentation lists them under 'Standard Encodings')"
        ) from None


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
        "output",
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
        self.output: tuple[Any, Any] | None = None  # what a communicate() returned

    def returned(self, input: Any) -> tuple[Any, Any] | None:
        """For a ``communicate()``: what one returned already (a later call returns it
        again, as ``Popen``'s does), or None."""
        if self.output is not None and input:
            raise InvalidArgumentError(
                "communicate() already sent this child its input and returned its output: give no "
                "input (a call without it returns the same output again)"
            )
        return self.output

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
