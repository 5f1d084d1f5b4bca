"""What the application's reader of a pipe took from it and has not returned yet.

``communicate()`` reads a child's pipes from their fds. When the application
read part of one through ``child.stdout`` (or ``stderr``) first, that file
object may hold more than it returned: a ``BufferedReader``'s buffer, and in
text mode a ``TextIOWrapper``'s decoded characters, plus what its decoder keeps
back (the bytes of a character not complete yet, a ``\\r`` kept to see whether
``\\n`` follows). All of it comes first in ``communicate()``'s output, in order.

A ``BufferedReader`` shows its buffer (``peek``). A ``TextIOWrapper`` shows
nothing: it is read one character at a time while its pipe raises
:class:`~childproc._childio.HeldOnly` instead of reading (a read that found the
pipe empty would look to it like the end of the stream, and its decoder would
flush what it keeps back: a character cut in two would raise
``UnicodeDecodeError``). One character per call, because a ``read`` that raises
drops what that call had gathered. Its decoder, which the C ``TextIOWrapper``
does not expose, is then found among the objects it refers to
(:func:`gc.get_referents`) and asked for its state.
"""

from __future__ import annotations

import gc
import io
from typing import Any, NamedTuple

from ._childio import HeldOnly, PipeFile

__all__ = ["Held", "take_binary", "take_text"]


def take_binary(f: Any) -> bytes:
    """What the ``BufferedReader`` ``f`` holds (its fd is non-blocking: no wait);
    nothing for an unbuffered reader (``bufsize=0``)."""
    if not isinstance(f, io.BufferedReader):
        return b""
    buffered: bytes = f.peek()
    return f.read(len(buffered)) if buffered else b""


class Held(NamedTuple):
    """What a text reader held, in stream order: its characters (with a ``\\r`` its
    decoder kept back last), then ``pending``, the bytes its codec's decoder keeps
    of a character not complete yet; ``state`` is that decoder's state (a
    ``utf-16`` decoder's byte order, say), to decode what follows with, or None."""

    text: str
    pending: bytes
    state: int | None


def take_text(f: Any) -> Held:
    """What the ``TextIOWrapper`` ``f`` holds (see :class:`Held`)."""
    raw: PipeFile = getattr(f.buffer, "raw", f.buffer)  # (bufsize=0: the pipe's file itself)
    chars: list[str] = []
    raw.holding = True
    try:
        while True:
            try:
                char = f.read(1)
            except HeldOnly:
                break  # (all it held is out, but what its decoder keeps back)
            if not char:
                break  # (it had seen the end of the stream)
            chars.append(char)
    finally:
        raw.holding = False
    text = "".join(chars)
    for obj in gc.get_referents(f):
        if isinstance(obj, io.IncrementalNewlineDecoder):
            pending, flag = obj.getstate()  # (its codec decoder's state, shifted, and the \r)
            obj.reset()
            return Held(text + "\r" * (flag & 1), bytes(pending), flag >> 1)
    return Held(text, b"", None)
