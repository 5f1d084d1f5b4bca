"""The fork server's wire protocol: what a client and the server send each other, and
what an exit fd carries.

Pure: layouts, constants, and functions that encode and decode them. Nothing here
opens a socket or calls the OS. The client (:mod:`childproc.forkserver`) and the
server's process (:mod:`childproc._fork_server`) both import it, and it imports
nothing of childproc. A fresh fork server loads it, so it keeps the server's rules,
which the top of ``_fork_server`` explains: of the standard library only ``_struct``
and ``_socket`` (the C halves, which both ends hold anyway, and ``_socket`` only for
the platform's constants), no ``typing`` at run time, and plain ints.

The server reads requests and writes replies inline, with the structs below rather
than with the functions (each function a request runs is a page written, rule 3 in
``_fork_server``), except where the path already costs more: the error replies
(:func:`error_reply`) and an entry's name and arguments (:func:`decode_call`). The
functions are the reference for the layouts, and what the client and the tests use.

Transport: one ``SOCK_SEQPACKET`` packet per message, at most :data:`MAX_PACKET`
bytes, with at most :data:`MAX_FDS` fds as ``SCM_RIGHTS`` (:func:`fds_in_ancdata`).

Request: a :data:`REQUEST` header (id, op, flags), then the op's body:

* ``FORK``, ``EVAL``: the entry's name in UTF-8, then optionally a NUL and the JSON
  list of arguments (:func:`encode_call`). ``FORK``'s flags are ``WANT_*``
  (:data:`FORK_WANTS`); ``EVAL``'s are 0.
* ``SPAWN``: a JSON object, ``{"argv", "env", "cwd", "pass_fds", "stdio"}``; the fds
  sent are those of ``pass_fds``, then the ``stdio`` ones that are not null. Flags:
  :data:`SPAWN_WANTS`.
* ``KILL_ALL``: a JSON object, ``{"signal": n}``.
* ``PING``, ``CONNECT``, ``STOP``, ``STOP_SERVER_ONLY``: nothing.

A fork's request and reply hold no JSON at all (rule 3 in ``_fork_server``: decoding
and encoding it touches some fifty pages in the server).

Reply: a :data:`REPLY` header (the request's id, ok, ``HAS_*`` of the fds that came
along, the new child's pid or the server's or 0), then a JSON object or nothing. The
fds come in ``HAS_*`` order: the socket, the exit fd, the pidfd. An error reply
(:func:`error_reply`) has ok 0, no fds and ``{"error": ..., "code": ..., "errno": ...}``.
A request too short to have an id is answered with id 0.

Exit fd: one :data:`EXIT_EVENT` record (pid, wait status), then end of file. An exit
fd that ends without one (the server stopped or died first, or ``eval``'d code reaped
the child) has nobody to report the status.
"""

from __future__ import annotations

import _socket
import _struct

TYPE_CHECKING = False  # typing is not imported at run time (rule 1 in _fork_server)
if TYPE_CHECKING:
    from struct import error as _StructError  # where the stubs have it
else:
    _StructError = _struct.error

#: Largest request or reply, in bytes.
MAX_PACKET = 64 * 1024
#: Most fds one message may carry.
MAX_FDS = 16

#: One exit record on an exit fd: (pid, wait status).
EXIT_EVENT = _struct.Struct("=ii")

#: A request's header: id, op, flags (``WANT_*`` for FORK and SPAWN, else 0).
REQUEST = _struct.Struct("=QBB")
REQUEST_SIZE = REQUEST.size  # a plain int: rule 3 in _fork_server
#: A reply's header: id, ok (1) or failed (0), HAS_* (the fds that came along), pid or 0.
REPLY = _struct.Struct("=QBBi")
REPLY_SIZE = REPLY.size

# Ops (plain ints: rule 2 in _fork_server).
PING, FORK, SPAWN, CONNECT, KILL_ALL, EVAL, STOP, STOP_SERVER_ONLY = range(1, 9)

#: A request's flags: what a new child comes with.
WANT_SOCKET, WANT_EXIT_FD, WANT_SERVER_CONN = 1, 2, 4
#: The flags each op accepts.
FORK_WANTS = WANT_SOCKET | WANT_EXIT_FD | WANT_SERVER_CONN
SPAWN_WANTS = WANT_EXIT_FD
#: The fds a reply carries, in this order.
HAS_SOCKET, HAS_EXIT_FD, HAS_PIDFD = 1, 2, 4
HAS_ALL = HAS_SOCKET | HAS_EXIT_FD | HAS_PIDFD

# The platform's values, as plain ints (rule 2 in _fork_server): recvmsg's flags in and out.
MSG_CMSG_CLOEXEC = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)
MSG_TRUNC, MSG_CTRUNC = _socket.MSG_TRUNC, _socket.MSG_CTRUNC
#: A packet or its fds did not fit: it was cut short.
TRUNCATED = MSG_TRUNC | MSG_CTRUNC
SOL_SOCKET, SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS
#: One fd in an ``SCM_RIGHTS`` message (a C int).
FD = _struct.Struct("i")
#: Room for the most fds a packet carries: ``recvmsg``'s ``ancbufsize``.
ANCDATA_SIZE = _socket.CMSG_LEN(MAX_FDS * FD.size)

#: The longest entry name the server accepts, in characters.
MAX_ENTRY_NAME = 512


class WireError(ValueError):
    """Bytes that are not the message they should be (too short, cut short, the wrong
    size), or a message that cannot be encoded (a field out of range)."""


def encode_request(rid: int, op: int, flags: int = 0, body: bytes = b"") -> bytes:
    """A request: the header, then ``body``. WireError if a field is out of range.
    The size is not checked: a client refuses more than :data:`MAX_PACKET` itself."""
    try:
        return REQUEST.pack(rid, op, flags) + body
    except _StructError as e:
        raise WireError(f"cannot encode a request: {e}") from None


def decode_request(data: bytes) -> tuple[int, int, int, bytes]:
    """(id, op, flags, body) of a request. WireError if it is shorter than the header."""
    if len(data) < REQUEST_SIZE:
        raise WireError(f"a request starts with a {REQUEST_SIZE}-byte header (id, op, flags)")
    rid, op, flags = REQUEST.unpack_from(data)
    return rid, op, flags, data[REQUEST_SIZE:]


def encode_reply(rid: int, ok: bool, has: int = 0, pid: int = 0, body: bytes = b"") -> bytes:
    """A reply: the header, then ``body`` (a JSON object, or nothing). WireError if a
    field is out of range."""
    try:
        return REPLY.pack(rid, 1 if ok else 0, has, pid) + body
    except _StructError as e:
        raise WireError(f"cannot encode a reply: {e}") from None


def decode_reply(data: bytes, msg_flags: int = 0) -> tuple[int, bool, int, int, bytes]:
    """(id, ok, has, pid, body) of a reply; ``msg_flags`` are ``recvmsg``'s.

    WireError if it is shorter than the header, or was cut short (``MSG_TRUNC``:
    longer than the largest reply). Lost fds (``MSG_CTRUNC``) are the caller's to
    handle: the reply itself is whole."""
    if len(data) < REPLY_SIZE:
        raise WireError(f"{len(data)} bytes, shorter than a reply's header")
    if msg_flags & MSG_TRUNC:
        raise WireError("longer than the largest reply")
    rid, ok, has, pid = REPLY.unpack_from(data)
    return rid, bool(ok), has, pid, data[REPLY_SIZE:]


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def error_reply(rid: int, message: str, code: str, err: int | None = None) -> bytes:
    """An error reply, its JSON written by hand: the server's error path must never
    need ``json``, whose first import can fail (out of fds is one of the errors it
    reports). ``code`` is a plain word (``FORK_ERROR``); ``message`` anything."""
    errno_text = "null" if err is None else str(int(err))
    body = f'{{"error": "{message.translate(_JSON_ESCAPES)}", "code": "{code}", "errno": {errno_text}}}'
    return REPLY.pack(rid, 0, 0, 0) + body.encode("utf-8", "replace")


def encode_call(name: str, args_json: bytes = b"") -> bytes:
    """A FORK or EVAL body: the entry's ``name``, then a NUL and ``args_json`` (the
    JSON list of arguments) if there are any. WireError if the name holds a NUL or
    is not valid Unicode."""
    if "\0" in name:
        raise WireError(f"an entry's name cannot hold a NUL: {name!r}")
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        raise WireError(f"an entry's name must be valid Unicode (no lone surrogates): {name!r}") from None
    return raw + b"\0" + args_json if args_json else raw


def decode_call(body: bytes) -> tuple[bytes, bytes]:
    """(the entry's name, the JSON arguments or ``b""``) of a FORK or EVAL body, both
    as bytes: the server looks names up as they came, and checks them itself."""
    name, _, args_json = body.partition(b"\0")
    return name, args_json


def encode_exit_event(pid: int, status: int) -> bytes:
    """The record an exit fd carries. WireError if a field is out of range."""
    try:
        return EXIT_EVENT.pack(pid, status)
    except _StructError as e:
        raise WireError(f"cannot encode an exit record: {e}") from None


def decode_exit_event(data: bytes) -> tuple[int, int]:
    """(pid, wait status) of an exit record. WireError if it is not one record's size
    (an exit fd that ends with no record reads as ``b""``)."""
    if len(data) != EXIT_EVENT.size:
        raise WireError(f"an exit record is {EXIT_EVENT.size} bytes, not {len(data)}")
    pid, status = EXIT_EVENT.unpack(data)
    return pid, status


def ancdata_for_fds(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """``sendmsg``'s ancillary data to send ``fds`` (none: an empty list).
    WireError for more than :data:`MAX_FDS` or a number that is not a C int."""
    if not fds:
        return []
    if len(fds) > MAX_FDS:
        raise WireError(f"at most {MAX_FDS} fds per message, not {len(fds)}")
    try:
        return [(SOL_SOCKET, SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))]
    except _StructError as e:
        raise WireError(f"not an fd: {e}") from None


def fds_in_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds that ``SCM_RIGHTS`` messages in ``recvmsg``'s ancillary data carry;
    other messages, and a trailing part of an fd, are ignored.

    Both ends call ``recvmsg(..., ANCDATA_SIZE, MSG_CMSG_CLOEXEC)`` themselves, and
    this takes the fds out: the standard library's ``socket.recv_fds`` drops its
    ``flags`` argument (CPython gh-107898, up to 3.13 at least), so it cannot ask
    for ``MSG_CMSG_CLOEXEC``, and fds received without it would leak into every
    program spawned until they are closed.
    """
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            count = len(payload) // FD.size  # whole fds only
            fds += _struct.unpack(f"{count}i", payload[: count * FD.size])
    return fds
