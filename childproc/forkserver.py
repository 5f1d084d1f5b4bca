"""A fork server in the libforks style: fork early, before threads and before the heap grows.

:meth:`ForkServer.start` forks a small copy of the process *now* (call it early,
while the process is single-threaded and small). Later, from any thread, the
process asks the server to fork on its behalf: the child is a copy of the
process as it was at ``start()``, so forking costs the same whatever the
caller's size, and no thread of the caller's is ever in a forked child.
:meth:`ForkServer.start_fresh` starts the server as a fresh interpreter
instead, whose children are cheaper still but run only importable entries.

What libforks does, in Python (and what it gets wrong, done right):

* ``start`` / :attr:`ForkServer.pid` / :meth:`~ForkServer.fork` (entry point,
  optional socket pair to the child, optional exit fd) / :meth:`~ForkServer.spawn`
  (exec a program) / :meth:`~ForkServer.kill_all` / :meth:`~ForkServer.stop` /
  :meth:`~ForkServer.stop_server_only` / :meth:`~ForkServer.eval`.
* Every request carries an id and replies are matched by id, so many threads
  may share one server without ever getting each other's replies.
* The server watches its children through pidfds in its own loop (no signal
  handler runs in it), reaps them there and writes each exit to that child's
  own pipe: a burst of exits never blocks it.
* Errors are exceptions in the caller (:class:`ForkServerError`); the server
  never aborts. A server that died is reported by every pending and later
  call (:class:`ForkServerDied`).
* The server watches the starting process (a pidfd): when it dies, the server
  SIGTERMs its children and exits (or leaves them, ``on_parent_death="keep"``).
* Reachable only through inherited socketpairs: no path, no abstract socket.
* Requests are a binary header and a body of bytes or JSON (never pickle) in
  bounded packets; a malformed, truncated or oversized request, or one
  carrying unexpected fds, gets an error reply and the server serves on.

Protocol: one ``SOCK_SEQPACKET`` packet per message, with fds as
``SCM_RIGHTS``: a request is a binary header (id, op, flags) and the op's body,
a reply a header (id, ok, which fds came, pid) and a JSON object or nothing.
Exit fds carry one ``struct "=ii"`` record (:data:`EXIT_EVENT`): (pid, wait
status). ``childproc._forkserver_wire`` defines it all, and is all that this
module and the server's side, ``childproc._fork_server``, share: this module
imports the server's side (to start one), never the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import marshal
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _fork_server
from ._errors import ChildprocError, InvalidArgumentError
from ._fork_server import Server
from ._forkserver_wire import (
    ANCDATA_SIZE,
    CONNECT,
    EVAL,
    EXIT_EVENT,
    FORK,
    HAS_ALL,
    HAS_EXIT_FD,
    HAS_PIDFD,
    HAS_SOCKET,
    KILL_ALL,
    MAX_FDS,
    MAX_PACKET,
    MSG_CMSG_CLOEXEC,
    MSG_CTRUNC,
    PING,
    SPAWN,
    STOP,
    STOP_SERVER_ONLY,
    WANT_EXIT_FD,
    WANT_SERVER_CONN,
    WANT_SOCKET,
    WireError,
    decode_exit_event,
    decode_reply,
    encode_call,
    encode_request,
    fds_in_ancdata,
)
from ._spawn import spawn_process
from ._status import ChildEvent
from ._traps import TRAPS
from ._warn import warn

if TYPE_CHECKING:
    import _socket

    from ._spawn import Argv

__all__ = [
    "EXIT_EVENT",
    "MAX_FDS",
    "MAX_PACKET",
    "ForkServer",
    "ForkServerDied",
    "ForkServerError",
    "ServedChild",
    "read_exit_event",
]


class ForkServerError(ChildprocError):
    """The fork server refused or failed a request; the message says why."""

    def __init__(self, message: str, code: str = "ERROR", err: int | None = None) -> None:
        super().__init__(message)
        #: A short code, as libforks's result names: ``TOO_MANY_CLIENTS``, ``FORK_ERROR``, ...
        self.code = code
        #: The errno behind it, where there is one.
        self.errno = err


class ForkServerDied(ForkServerError):
    """The fork server is gone (killed, or stopped): this and every later call fail."""


def read_exit_event(fd: int) -> ChildEvent | None:
    """Read the exit record from an exit fd; None if it is not there yet (non-blocking fd)."""
    try:
        data = os.read(fd, EXIT_EVENT.size)
    except BlockingIOError:
        return None
    try:
        pid, status = decode_exit_event(data)
    except WireError:
        raise ForkServerDied(
            "exit fd closed without an exit record: the fork server stopped (stop_server_only) "
            "or died before this child exited, or code run in the server (eval) reaped the "
            "child first, so nobody can report its status"
        ) from None
    return ChildEvent.from_wait_status(pid, status)


@dataclass
class ServedChild:
    """A child the fork server made for us."""

    pid: int
    #: Our end of the socket pair to the child (``socket=True``), else None.
    socket: socket.socket | None = None
    #: Readable when the child exits: one ``EXIT_EVENT`` record (``exit_fd=True``), else None.
    exit_fd: int | None = None
    #: A pidfd for the child, for signalling it safely (where the kernel has pidfds).
    pidfd: int | None = None
    _closed: bool = field(default=False, repr=False)
    _handed_over: bool = field(default=False, repr=False)  # (detach_fds: a Context's now)

    def wait(self) -> ChildEvent:
        """Block until the child exits; its exit event (needs the exit fd)."""
        if self._handed_over:
            raise InvalidArgumentError(
                "this child's exit fd was handed to a Context (watch_served()): wait through "
                "the handle watch_served() returned"
            )
        if self.exit_fd is None:
            raise InvalidArgumentError("this child was forked without exit_fd=True")
        os.set_blocking(self.exit_fd, True)
        try:
            event = read_exit_event(self.exit_fd)
        finally:
            os.set_blocking(self.exit_fd, False)
        assert event is not None
        return event

    def send_signal(self, sig: int) -> None:
        """Signal the child through its pidfd (never a recycled pid)."""
        if self.pidfd is None:
            raise InvalidArgumentError("no pidfd for this child: cannot signal it safely")
        signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        """Close our fds for this child (socket, exit fd, pidfd). The child runs on."""
        if self._closed:
            return
        self._closed = True
        if self.socket is not None:
            self.socket.close()
        for fd in (self.exit_fd, self.pidfd):
            if fd is not None:
                os.close(fd)

    def detach_fds(self) -> tuple[int | None, int | None]:
        """Hand the exit fd and pidfd over to someone else (a Context): ours no more."""
        fds = (self.exit_fd, self.pidfd)
        self.exit_fd = self.pidfd = None
        self._handed_over = True
        return fds


def _entry_ref(entry: object, names: Mapping[int, str]) -> str:
    """How the server will find ``entry``: a name given at start, or ``module:qualname``.
    A string goes as it is: the server knows its names, and says NO_ENTRY otherwise."""
    if isinstance(entry, str):
        return entry
    if id(entry) in names:
        return names[id(entry)]
    module, qualname = getattr(entry, "__module__", None), getattr(entry, "__qualname__", "")
    if not callable(entry) or not module or not qualname or "<" in qualname:
        raise InvalidArgumentError(
            f"{entry!r} cannot be found by the fork server: use a module-level function, a "
            "'module:function' string, or pass it to ForkServer.start(entries={...})"
        )
    return f"{module}:{qualname}"


def _call_body(entry: object, args: Sequence[Any], names: Mapping[int, str]) -> bytes:
    """A FORK or EVAL body: the entry's name, then a NUL and the JSON arguments (if any)."""
    ref = _entry_ref(entry, names)
    try:
        name = encode_call(ref)  # the name alone, checked first
    except WireError as e:
        raise InvalidArgumentError(str(e)) from None
    if not args:
        return name
    try:
        return encode_call(ref, json.dumps(list(args)).encode())
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            "the arguments must be JSON values (str, int, float, bool, None, lists, dicts "
            f"with str keys): {e}"
        ) from None


# ==================================================================================
# The client
# ==================================================================================
class _Reply(NamedTuple):
    ok: bool
    has: int  # HAS_* of the fds that came with it (in this order: socket, exit fd, pidfd)
    pid: int  # of the child a fork or spawn made, or the server's (ping); else 0
    result: dict[str, Any]  # the op's result, or the error; {} for none
    fds: list[int]


#: ``recvmsg``'s arguments (close-on-exec: the fds sent must not leak into later programs).
_RECVMSG = ((MAX_PACKET, ANCDATA_SIZE, MSG_CMSG_CLOEXEC),)

#: A send that fails with one of these lost the connection; others are the request's fault.
_CONNECTION_LOST = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED})


def _parse_reply(data: bytes, fds: list[int], flags: int) -> tuple[int, _Reply]:
    """(request id, reply) from a reply packet. Raises ValueError if it is malformed.

    A reply whose fds this process could not take (``MSG_CTRUNC``: out of fds)
    becomes an error reply for its request; the connection lives on."""
    rid, ok, has, pid, body = decode_reply(data, flags)  # WireError is a ValueError
    result = json.loads(body) if body else {}  # ValueErrors
    if not isinstance(result, dict):
        raise ValueError("its body is not a JSON object")
    if flags & MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        made = f"made child {pid}, which runs on, but " if pid and ok else ""
        error = (
            f"the fork server {made}the fds of its reply did not arrive: this process may be out "
            "of fds (RLIMIT_NOFILE)"
        )
        return rid, _Reply(False, 0, pid, {"error": error, "code": "FDS_LOST"}, [])
    if has & ~HAS_ALL or len(fds) != bin(has).count("1"):
        raise ValueError(f"it names fds {has:#x} but carries {len(fds)}")
    return rid, _Reply(bool(ok), has, pid, result, fds)


class _Connection:
    """One socket to the server, shared by threads: requests carry ids, replies are
    matched by id; one thread at a time reads and hands others their replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        import threading  # noqa: PLC0415 - the client's; a fresh server must not load it

        self._send_lock = threading.Lock()
        self._cv = threading.Condition()
        self._replies: dict[int, _Reply] = {}
        self._abandoned: set[int] = set()  # ids whose caller left (an exception) before the reply
        self._reading = False
        self._next_id = 1
        self._dead: str | None = None
        self._pid = os.getpid()  # the process whose connection it is

    def request(
        self,
        op: int,
        body: bytes = b"",
        fds: Sequence[int] = (),
        want: int = 0,
        into: list[_Reply] | None = None,
    ) -> _Reply:
        """Send a request and wait for its reply. ``into``: where the reply lands, from
        C, as soon as this thread takes it, so that a caller interrupted anywhere after
        that (a ``KeyboardInterrupt``) still holds it, and closes its fds."""
        if os.getpid() != self._pid:
            raise ForkServerError(
                f"this fork server connection belongs to process {self._pid}, which forked this one: "
                "parent and child would share one socket and take each other's replies. Start a "
                "server in the child (or use the server_conn a served child is given)",
                "FORKED",
            )
        with self._cv:
            if self._dead:
                raise ForkServerDied(self._dead)
            rid = self._next_id
            self._next_id += 1
        data = encode_request(rid, op, want, body)
        if len(data) > MAX_PACKET:
            raise InvalidArgumentError(f"request too large ({len(data)} bytes > {MAX_PACKET})")
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.send(data)
        except OSError as e:
            if e.errno not in _CONNECTION_LOST and not self._dead:
                # Nothing was sent (a SEQPACKET send is whole or nothing): the request's
                # fault, not the connection's. EBADF: an fd to pass is not open.
                what = "an fd to pass is not open" if e.errno == errno.EBADF else e.strerror
                raise InvalidArgumentError(f"cannot send the request to the fork server: {what}") from e
            self._die(f"the fork server is gone ({e.strerror})")
            raise ForkServerDied(self._dead or "the fork server is gone") from e
        return self._await(rid, [] if into is None else into)

    def _die(self, why: str) -> None:
        with self._cv:
            if self._dead is None:
                self._dead = why
            self._cv.notify_all()

    def _await(self, rid: int, got: list[_Reply]) -> _Reply:
        with self._cv:
            try:
                self._wait_for(rid, got)
            except BaseException:  # ForkServerDied, or KeyboardInterrupt while waiting
                if not got:  # (taken: the caller closes its fds)
                    self._abandon(rid)
                raise
        reply = got[0]
        if not reply.ok:
            self._close_fds(reply)
            result = reply.result
            raise ForkServerError(
                result.get("error", "the fork server failed"),
                result.get("code", "ERROR"),
                result.get("errno"),
            )
        return reply

    def _wait_for(self, rid: int, got: list[_Reply]) -> None:
        """Reply ``rid``, read by this thread or by another, into ``got``; called
        holding ``_cv``."""
        while True:
            if rid in self._replies:
                got.extend(map(self._replies.pop, (rid,)))  # (lands from C: see request)
                return
            if self._dead:
                raise ForkServerDied(self._dead)
            if self._reading:
                self._cv.wait(1.0)  # (a notify an interrupt skipped is made up for)
                continue
            try:
                self._reading = True
                self._cv.release()
                self._read_one()
            finally:
                # Whatever happened, someone else may read now; interrupted before the
                # release or after it, the lock is this thread's again either way.
                self._reading = False
                self._relock()
                self._cv.notify_all()
            self._close_abandoned()

    def _relock(self) -> None:
        """Take ``_cv``'s lock back after a read, whatever interrupts the wait for it
        (a signal handler's exception): that is raised once the lock is held, or the
        caller's ``with`` would release a lock it does not hold."""
        interrupted: BaseException | None = None
        while not self._cv._is_owned():  # type: ignore[attr-defined]
            try:
                self._cv.acquire()
            except BaseException as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def _close_abandoned(self) -> None:
        """Close the fds of replies whose callers left before they came. ``_cv`` held."""
        for rid in [rid for rid in self._abandoned if rid in self._replies]:
            self._abandoned.discard(rid)
            self._close_fds(self._replies.pop(rid))

    def _abandon(self, rid: int) -> None:
        """The caller of ``rid`` is leaving without its reply: close its fds when it comes."""
        if rid in self._replies:
            self._close_fds(self._replies.pop(rid))
        elif not self._dead:
            self._abandoned.add(rid)

    @staticmethod
    def _close_fds(reply: _Reply) -> None:
        """Close the reply's fds not taken yet (each is out of the list before it is
        closed: repeated after an interruption, none is closed twice)."""
        fds = reply.fds
        while fds:
            os.close(fds.pop())

    def _read_one(self) -> None:
        """Read one reply into ``_replies`` (called without ``_cv``'s lock), or find the
        connection dead (``_die`` says why).

        A reply read is the reader's to hand over, maybe to another thread: if an
        exception (a KeyboardInterrupt) cuts in once it has arrived and before it is
        stored, it is lost, and so is the connection, or its owner would wait for ever."""
        arrived: list[tuple[bytes, list[tuple[int, int, bytes]], int, Any]] = []
        stored = False
        try:
            # Close-on-exec: the fds we are sent must not leak into programs spawned later.
            # The message lands in ``arrived`` from C: an interrupt right after the call
            # still knows it came.
            try:
                arrived.extend(itertools.starmap(self.sock.recvmsg, _RECVMSG))
            except ConnectionResetError:
                # A server that went with requests of ours unread (stop() while other
                # threads' were in flight) resets the connection, which is reported
                # once, before the replies it sent before it went: they are read on.
                arrived.extend(itertools.starmap(self.sock.recvmsg, _RECVMSG))
            data, ancdata, flags, _ = arrived[0]
            fds = fds_in_ancdata(ancdata) if ancdata else []
            if not data:
                stored = True  # (nothing to store: an end)
                for fd in fds:
                    os.close(fd)
                self._die("the fork server died (its socket closed)")
                return
            try:
                rid, reply = _parse_reply(data, fds, flags)
            except ValueError as e:
                stored = True  # (nothing to store: the connection goes)
                for fd in fds:
                    os.close(fd)
                self._die(
                    f"the fork server sent a reply this client cannot read ({e}), so no later "
                    "reply can be trusted: stop this server and start another"
                )
                return
            self._replies[rid] = reply
            stored = True
        except OSError as e:
            if not arrived:
                self._die(f"the fork server connection failed ({e.strerror})")
                return
            raise
        finally:
            if arrived and not stored:
                self._die(
                    "a reply from the fork server was lost (the thread reading it was interrupted, "
                    "and it may have been another thread's): stop this server and start another"
                )

    def close(self) -> None:
        self._die("this fork server connection was closed")
        self.sock.close()


#: The fork servers this process started and has not reaped (pids, in order; the
#: doctor reads it: they are children of this process, and none start after threads).
SERVERS: dict[int, None] = {}


class ForkServer:
    """A connection to a fork server; thread-safe. Start one with :meth:`start`."""

    def __init__(self, conn: _Connection, pid: int, entries: Mapping[int, str], owner: bool) -> None:
        self._conn = conn
        self._pid = pid
        self._names = entries  # id(callable) -> name, for entries registered at start
        self._owner = owner  # the process that started it (may stop it)
        self._reaped = False
        if owner:
            SERVERS[pid] = None

    # -- lifecycle --------------------------------------------------------------
    @classmethod
    def start(
        cls,
        *,
        entries: Mapping[str, Callable[..., Any]] | None = None,
        max_clients: int = 64,
        on_parent_death: str = "terminate",
    ) -> ForkServer:
        """Fork the server now: call it early, before threads start and the heap grows.

        ``entries``: callables the children may run, by name (any callable, even a
        closure, as it exists at this moment). ``max_clients``: connections the
        server accepts at once (this one, plus children that keep one).
        ``on_parent_death``: when this process dies, ``"terminate"`` (SIGTERM the
        children, then exit) or ``"keep"`` (just exit; the children run on).
        Several servers per process are allowed.
        """
        cls._check_start_args(max_clients, on_parent_death)
        import threading  # noqa: PLC0415

        if threading.active_count() > 1:
            names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
            warn(
                "ForkServer.start(): "
                + TRAPS["threads-before-fork-server"].error(
                    "the server and its children are forked from a multi-threaded process",
                    count=len(names),
                    names=", ".join(names[:5]),
                ),
                RuntimeWarning,
            )
        table = dict(entries or {})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        _fork_server._flush_stdio()  # or what is buffered now is printed by every child
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                Server(
                    theirs, parent, table, max_clients, on_parent_death, child_connection=cls._for_child
                ).serve()
            except BaseException:
                code = 70
                _fork_server._print_exc_quietly()
            finally:
                os._exit(code)
        theirs.close()
        return cls(_Connection(ours), pid, {id(fn): name for name, fn in table.items()}, owner=True)

    @classmethod
    def start_fresh(
        cls,
        *,
        entries: Mapping[str, Callable[..., Any] | str] | None = None,
        preload: Sequence[str] = (),
        max_clients: int = 64,
        on_parent_death: str = "terminate",
    ) -> ForkServer:
        """Start the server as a fresh interpreter, not as a copy of this process.

        The server is ``python -I`` started with ``posix_spawn``: it holds only
        the standard library's start-up modules, childproc's server and what it
        imports for you, so its forks are cheaper than a copying server's
        (about a third of the time in ``benchmarks/bigparent.py``; a bare interpreter
        forks faster still). Its children's stdout and stderr write through, to a
        file that writes all it is given: nothing waits in a buffer, so a child
        leaves without a flush (unless it reconfigured or replaced them).
        An entry that prints a great deal should buffer its own output. A copy
        made by :meth:`start` carries every module this process had imported,
        and the at-fork hooks of some of them (``threading``, ``logging``,
        ``random``) make each of its forks cost several times more. The price:
        entries must be importable, because nothing of this process is in the
        server.

        ``entries``: name -> a module-level function, or a ``"module:function"``
        string; they are imported in the server when it starts. ``preload``:
        modules to import in the server at start, so that the children do not
        each import them. The server's ``sys.path`` is this process's.
        ``max_clients`` and ``on_parent_death`` as for :meth:`start`.

        Raises :class:`~childproc.InvalidArgumentError` for an entry that a
        fresh interpreter cannot import (a lambda, a closure, a function of
        ``__main__``), and :class:`ForkServerError` if the server cannot start
        (an entry or a preloaded module fails to import; its traceback goes to
        the server's stderr, which is this process's).
        """
        cls._check_start_args(max_clients, on_parent_death)
        refs: dict[str, str] = {}
        names: dict[int, str] = {}
        for name, entry in (entries or {}).items():
            try:
                ref = _entry_ref(entry, {})
            except InvalidArgumentError:
                raise InvalidArgumentError(
                    f"entry {name!r}: {entry!r} cannot be imported by a fresh interpreter; use a "
                    "module-level function or a 'module:function' string, or ForkServer.start()"
                ) from None
            module, _, qualname = ref.partition(":")
            if not module or not qualname:
                raise InvalidArgumentError(
                    f"entry {name!r}: {ref!r} is not 'module:function' (a fresh server imports its entries)"
                )
            if module == "__main__":
                raise InvalidArgumentError(
                    f"entry {name!r} ({ref}) lives in __main__, which a fresh interpreter does not have: "
                    "move it to a module, or use ForkServer.start()"
                )
            refs[name] = ref
            if not isinstance(entry, str):
                names[id(entry)] = name
        if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
            raise InvalidArgumentError(f"preload must be a sequence of module names, not {preload!r}")
        # The server's sys.path is ours (str entries; '' stays "the current directory"),
        # with childproc's own location added last if it is not on it already.
        path = [str(p) for p in sys.path if isinstance(p, str)]
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The dynamic linker is to bind every symbol at once, in the server: else each child
        # binds the functions only a child calls (the after-fork ones), and so writes (copies)
        # the pages it fixes up, some fifteen a fork. The server then unsets the variable, so
        # that what it runs has this process's environment (which may set it itself).
        bind_now = "LD_BIND_NOW" not in os.environ
        # marshal, not json: the server must not import json (rule 1 in _fork_server), and this
        # is our own data for the same interpreter (never a request off the socket).
        config = marshal.dumps(
            {
                "fd": _FRESH_FD,
                "parent": os.getpid(),
                "entries": {str(name): str(ref) for name, ref in refs.items()},
                "preload": [str(m) for m in preload],
                "max_clients": int(max_clients),
                "on_parent_death": str(on_parent_death),
                "use_pidfds": bool(_fork_server.USE_PIDFDS),
                "unset_bind_now": bind_now,
                "path": path if package_root in path else [*path, package_root],
            }
        ).hex()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = spawn_process(
                [sys.executable, "-I", "-c", _FRESH_MAIN, config],
                env={**os.environ, "LD_BIND_NOW": "1"} if bind_now else None,
                cwd=None,
                pass_fds=(),
                stdin=None,
                stdout=None,
                stderr=None,
                fd_map={_FRESH_FD: theirs.fileno()},
            )
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start a fresh fork server: {e}", "START_ERROR", e.errno) from e
        finally:
            theirs.close()
        server = cls(_Connection(ours), pid, names, owner=True)
        try:
            # The server answers once its entries and preloads are imported; an
            # import that hangs must not hang us.
            ours.settimeout(_FRESH_START_TIMEOUT_S)
            try:
                server.ping()
            finally:
                ours.settimeout(None)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # whatever it was doing: it is not starting
            server._finish()  # closes our end, reaps the server
            if not isinstance(e, ForkServerError):
                raise
            raise ForkServerError(
                f"the fresh fork server did not start ({e}); its traceback, if any, is on stderr",
                "START_ERROR",
            ) from e
        return server

    @staticmethod
    def _check_start_args(max_clients: int, on_parent_death: str) -> None:
        if on_parent_death not in ("terminate", "keep"):
            raise InvalidArgumentError('on_parent_death must be "terminate" or "keep"')
        if not isinstance(max_clients, int) or isinstance(max_clients, bool) or max_clients < 1:
            raise InvalidArgumentError("max_clients must be an int >= 1")

    @property
    def pid(self) -> int:
        """The server's pid (libforks_get_server_pid)."""
        return self._pid

    def stop(self) -> None:
        """SIGTERM every child, wait until all have exited, stop the server (libforks_stop).

        If the server cannot be reached (:class:`ForkServerDied`) but still runs, the
        process that started it stops it from outside: SIGTERM to each of its
        children, then SIGKILL to the server (the children are not waited for), and
        the ForkServerDied is raised all the same.
        """
        try:
            self._conn.request(STOP)
        except ForkServerDied:
            self._stop_from_outside()
            raise
        self._finish()

    def _stop_from_outside(self) -> None:
        """The connection is unusable: end the server (ours, unreaped, so its pid is safe)."""
        if not self._owner or self._reaped:
            return
        pid = self._pid
        try:
            # Stopped, it reaps nothing, so each of its children keeps its pid until killed.
            os.kill(pid, signal.SIGSTOP)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = [int(p) for p in f.read().split()]
            except OSError:
                children = []
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._finish()

    def stop_server_only(self) -> None:
        """Stop the server and leave its children running (libforks_stop_server_only)."""
        self._conn.request(STOP_SERVER_ONLY)
        self._finish()

    def _finish(self) -> None:
        self._conn.close()
        if self._owner and not self._reaped:
            self._reaped = True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            SERVERS.pop(self._pid, None)

    def close(self) -> None:
        """Drop this connection (libforks_free_conn); the server runs on for others.
        In the process that started it, prefer :meth:`stop`."""
        self._conn.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ForkServerDied):  # stopped from outside, then (see stop)
            self.stop()

    # -- requests -----------------------------------------------------------------
    def fork(
        self,
        entry: Callable[..., Any] | str,
        *args: Any,
        socket: bool = False,
        exit_fd: bool = True,
        server_conn: bool = False,
    ) -> ServedChild:
        """Fork a child that runs ``entry(server, sock, *args)`` and exits when it returns.

        ``entry`` is a name given to :meth:`start`, a ``"module:function"`` string
        or a module-level function. ``args`` must be JSON values. ``server`` is a
        :class:`ForkServer` connection for the child (``server_conn=True``) or
        None; ``sock`` is the child's end of a socket pair (``socket=True``) or None.
        The child is a copy of the server: of this process as it was at
        :meth:`start`, or of a fresh interpreter (:meth:`start_fresh`).
        """
        want = (WANT_SOCKET if socket else 0) | (WANT_EXIT_FD if exit_fd else 0)
        want |= WANT_SERVER_CONN if server_conn else 0
        return self._served(FORK, _call_body(entry, args, self._names), (), want)

    def spawn(
        self,
        argv: Argv,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        exit_fd: bool = True,
    ) -> ServedChild:
        """Run a program from the server (``posix_spawn`` there): the exec path.

        Our ``pass_fds`` and ``stdin``/``stdout``/``stderr`` fds travel to the server
        (SCM_RIGHTS) and appear in the child at the same numbers / at 0, 1, 2.
        """
        if isinstance(argv, (str, bytes)) or not argv:
            raise InvalidArgumentError(f"argv must be a non-empty list of arguments, not {argv!r}")
        send = list(pass_fds) + [fd for fd in (stdin, stdout, stderr) if fd is not None]
        if len(send) > MAX_FDS:
            raise InvalidArgumentError(f"at most {MAX_FDS} fds per spawn")
        body = {
            "argv": [os.fsdecode(a) for a in argv],
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "pass_fds": list(pass_fds),
            "stdio": [fd for fd in (stdin, stdout, stderr)],
        }
        return self._served(SPAWN, json.dumps(body).encode(), send, WANT_EXIT_FD if exit_fd else 0)

    def _served(self, op: int, body: bytes, send: Sequence[int], want: int) -> ServedChild:
        """A fork or spawn request's child. Interrupted once its reply came (a
        ``KeyboardInterrupt``), the fds that came with it are closed, whoever holds
        them by then (the child runs on: see "Errors" in the docs)."""
        got: list[_Reply] = []
        made: list[ServedChild] = []
        try:
            reply = self._conn.request(op, body, send, want, into=got)
            made.append(ServedChild(pid=reply.pid))
            child, fds = made[0], reply.fds
            # Each fd leaves the reply's list before its new holder has it: interrupted
            # in between, it leaks, but it is never closed twice.
            if reply.has & HAS_SOCKET:
                child.socket = socket.socket(fileno=fds.pop(0))
            if reply.has & HAS_EXIT_FD:
                child.exit_fd = fds.pop(0)
                os.set_blocking(child.exit_fd, False)
            if reply.has & HAS_PIDFD:
                child.pidfd = fds.pop(0)
            _Connection._close_fds(reply)  # (never expected; never leaked)
            return child
        except BaseException:
            for child in made:
                child.close()
            for reply in got:
                _Connection._close_fds(reply)
            raise

    def kill_all(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to every child of the server except the caller (libforks_kill_all);
        returns how many were signalled."""
        reply = self._conn.request(KILL_ALL, json.dumps({"signal": int(sig)}).encode())
        return int(reply.result["count"])

    def eval(self, fn: Callable[..., Any] | str, *args: Any) -> Any:
        """Run ``fn(*args)`` in the server and return its (JSON) result (libforks_eval).

        Powerful and dangerous: the server is single-threaded and serves everyone;
        a function that blocks or crashes takes it down.
        """
        return self._conn.request(EVAL, _call_body(fn, args, self._names)).result.get("result")

    def connect(self) -> ForkServer:
        """A new, independent connection to the same server (counts toward ``max_clients``)."""
        got: list[_Reply] = []
        try:
            reply = self._conn.request(CONNECT, into=got)
            sock = socket.socket(fileno=reply.fds.pop(0))  # (out of the list first: as in _served)
            _Connection._close_fds(reply)
        except BaseException:
            for reply in got:
                _Connection._close_fds(reply)
            raise
        return ForkServer(_Connection(sock), self._pid, self._names, owner=False)

    def ping(self) -> int:
        """Round-trip to the server; returns its pid."""
        return self._conn.request(PING).pid

    @classmethod
    def _for_child(cls, sock: _socket.socket, server_pid: int) -> ForkServer:
        """A served child's own connection to its server (``fork(server_conn=True)``), over
        ``sock`` (a ``_socket.socket``: rule 1 in ``_fork_server``). The server calls it,
        in the child, as its ``child_connection`` (see ``start`` and ``_FRESH_MAIN``)."""
        return cls(_Connection(socket.socket(fileno=sock.detach())), server_pid, {}, owner=False)


#: What a fresh server runs (``python -I -c _FRESH_MAIN CONFIG``): take the starter's
#: sys.path, then serve. -I: no PYTHON* variables and no user site of its own. Its
#: children's connections to it are ForkServer._for_child's, as a copying server's, but
#: this module is imported only in a child that asks for one (rule 1 in _fork_server).
_FRESH_MAIN = """\
import marshal, sys
config = marshal.loads(bytes.fromhex(sys.argv[1]))
sys.path[:] = config["path"]


def child_connection(sock, server_pid):
    from childproc.forkserver import ForkServer

    return ForkServer._for_child(sock, server_pid)


from childproc._fork_server import serve_fresh

serve_fresh(config, child_connection)
"""
_FRESH_FD = 3  # where the server finds its end of the socket pair
_FRESH_START_TIMEOUT_S = 120.0  # for the server's imports (entries, preloads)
